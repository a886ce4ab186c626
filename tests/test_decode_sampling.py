"""NucleusSampler draws from the distribution transformers' temperature + top-p + multinomial draws from."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from constitutional.models.sampling import NucleusSampler, nucleus

VOCAB = 40
DRAWS = 40_000


def logits(seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, VOCAB, generator=generator) * 2.5  # peaked enough that top-p cuts a real tail


def transformers_distribution(scores: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """The probabilities transformers' sampling draws from: temperature, top-p filter, softmax."""
    warped = TemperatureLogitsWarper(temperature)(None, scores.clone())
    if top_p < 1:
        warped = TopPLogitsWarper(top_p)(None, warped)
    return torch.softmax(warped, dim=-1)[0]


@pytest.mark.parametrize("top_p", [0.3, 0.9, 0.99])
def test_nucleus_keeps_what_transformers_top_p_keeps(top_p):
    for seed in range(20):
        scores = logits(seed)
        probs = torch.softmax(scores, dim=-1)
        descending, order = probs.sort(dim=-1, descending=True)
        kept = torch.zeros_like(probs, dtype=torch.bool).scatter(1, order, nucleus(descending, top_p))
        expected = TopPLogitsWarper(top_p)(None, scores.clone()) > -float("inf")
        assert torch.equal(kept, expected)


@pytest.mark.parametrize(
    ("temperature", "top_p", "width"),
    [(0.7, 0.9, 256), (1.0, 0.95, 256), (0.7, 0.9, 3), (1.3, 1.0, 256)],  # width 3: rows sorted whole
)
def test_draws_follow_the_transformers_distribution(temperature, top_p, width):
    torch.manual_seed(0)
    scores = logits(1)
    expected = transformers_distribution(scores, temperature, top_p)
    assert (expected == 0).any() or top_p == 1.0  # a tail is cut, so drawing from it would show
    sampler = NucleusSampler(temperature, top_p, width=width)
    drawn = sampler(None, scores.expand(DRAWS, -1).clone())
    assert torch.all(drawn.max(dim=-1).values == 0) and torch.all((drawn == 0).sum(dim=-1) == 1)
    counts = torch.bincount(drawn.argmax(dim=-1), minlength=VOCAB).float()
    frequencies = counts / DRAWS
    assert torch.all(frequencies[expected == 0] == 0)
    # Binomial standard error is at most 0.0025 at 40k draws: 5 of them.
    assert torch.max(torch.abs(frequencies - expected)).item() < 0.0125


def test_rows_draw_independently_and_reproducibly():
    scores = torch.cat([logits(2), logits(3)]).repeat(50, 1)
    sampler = NucleusSampler(0.8, 0.9)
    torch.manual_seed(5)
    first = sampler(None, scores.clone()).argmax(dim=-1)
    torch.manual_seed(5)
    assert torch.equal(sampler(None, scores.clone()).argmax(dim=-1), first)
    assert len(set(first[0::2].tolist())) > 1  # the same row's draws vary


def test_banned_tokens_are_never_drawn():
    scores = logits(4).repeat(5000, 1)
    banned = scores[0].topk(3).indices
    scores[:, banned] = -float("inf")  # as the n-gram block leaves them
    for top_p in (0.9, 1.0):
        drawn = NucleusSampler(1.0, top_p)(None, scores.clone()).argmax(dim=-1)
        assert not torch.isin(drawn, banned).any()


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        NucleusSampler(0.0, 0.9)
    with pytest.raises(ValueError):
        NucleusSampler(0.7, 0.0)
