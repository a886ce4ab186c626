"""Temperature and nucleus (top-p) sampling in a few tensor operations per step, as a logits processor.

transformers samples a nucleus by sorting the whole vocabulary at every step and then drawing with
`torch.multinomial`, which makes one exponential variate per vocabulary entry. At batch 20 over SmolLM2's 49,152
tokens that was ~36 ms for the top-p filter and ~16 ms for the draw per step on this 2-core CPU: about as long as
the model's own decode step. The nucleus lies among the likeliest few hundred tokens, so `NucleusSampler` takes
those with `topk` (~1.4 ms) and draws with one uniform variate per row (inverse CDF); rows whose nucleus reaches
past them are sorted whole.

It returns scores that are -inf except at the drawn token, so `generate` runs greedily (`do_sample=False`) on top
of the repetition penalty and n-gram block it applies first. The distribution is transformers' (temperature,
then keep the likeliest tokens until their mass reaches top_p, the boundary token included); the draws differ
from `torch.multinomial`'s for the same seed, and tokens of exactly equal probability at the nucleus boundary
(bf16 logits tie often) are split by `topk`'s order rather than by `torch.sort`'s.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor

# How many of the likeliest tokens are searched for the nucleus before falling back to a full sort. At
# temperature 0.7 a 135M model's nucleus at p=0.9 held ~1-100 tokens; topk(256) over 49k costs ~3 ms at batch 20.
NUCLEUS_WIDTH = 256


class NucleusSampler(LogitsProcessor):
    """Draws the next token of every row from softmax(scores / temperature) restricted to its top-p nucleus."""

    def __init__(self, temperature: float, top_p: float, width: int = NUCLEUS_WIDTH):
        if temperature <= 0 or not 0 < top_p <= 1:
            raise ValueError(f"need temperature > 0 and 0 < top_p <= 1, got {temperature} and {top_p}")
        self.temperature, self.top_p, self.width = temperature, top_p, width

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        tokens = self.draw(probs)
        drawn = torch.full_like(scores, -float("inf"))
        return drawn.scatter_(1, tokens.unsqueeze(1), 0.0)

    def draw(self, probs: torch.Tensor) -> torch.Tensor:
        """One token per row of `probs` (rows of probabilities)."""
        if self.top_p >= 1:
            return _inverse_cdf(probs, torch.arange(probs.shape[-1], device=probs.device).expand_as(probs))
        likeliest, tokens = probs.topk(min(self.width, probs.shape[-1]), dim=-1)
        kept = nucleus(likeliest, self.top_p)
        reaching = kept[:, -1]  # the nucleus may go on past the tokens looked at: sort these rows whole
        if reaching.any():
            whole, order = probs[reaching].sort(dim=-1, descending=True)
            chosen = torch.empty(probs.shape[0], dtype=torch.long, device=probs.device)
            chosen[reaching] = _inverse_cdf(whole * nucleus(whole, self.top_p), order)
            rest = ~reaching
            chosen[rest] = _inverse_cdf(likeliest[rest] * kept[rest], tokens[rest])
            return chosen
        return _inverse_cdf(likeliest * kept, tokens)


def nucleus(descending: torch.Tensor, top_p: float) -> torch.Tensor:
    """Which of the probabilities (sorted descending per row) the nucleus keeps: a token stays while the mass of
    the tokens before it is below top_p, as transformers' TopPLogitsWarper (so the first always stays)."""
    before = descending.cumsum(dim=-1) - descending
    return before < top_p


def _inverse_cdf(weights: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Per row, the token whose cumulative weight first exceeds a uniform draw over the row's total weight."""
    cumulative = weights.cumsum(dim=-1)
    threshold = torch.rand(weights.shape[0], 1, device=weights.device, dtype=cumulative.dtype) * cumulative[:, -1:]
    index = (cumulative <= threshold).sum(dim=-1, keepdim=True).clamp(max=weights.shape[-1] - 1)
    return tokens.gather(1, index).squeeze(1)
