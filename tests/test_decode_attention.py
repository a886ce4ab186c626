"""The one-token attention computes what SDPA computes, and leaves everything else to SDPA."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from constitutional.models import ModelSpec, load_model
from constitutional.models.attention import NAME, decode_attention, whole_buffers

BATCH, HEADS, KV_HEADS, LENGTH, DIM = 3, 6, 2, 11, 8


def inputs(dtype: torch.dtype, queries: int = 1):
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(BATCH, HEADS, queries, DIM, generator=generator).to(dtype)
    key = torch.randn(BATCH, KV_HEADS, LENGTH, DIM, generator=generator).to(dtype)
    value = torch.randn(BATCH, KV_HEADS, LENGTH, DIM, generator=generator).to(dtype)
    keep = torch.ones(BATCH, 1, queries, LENGTH, dtype=torch.bool)
    keep[0, ..., :4] = False  # left padding
    keep[1, ..., -2:] = False  # positions not written yet
    return query, key, value, keep


def reference(query, key, value, keep, scaling):
    """SDPA in float32 with every key/value head copied for the query heads that share it."""
    groups = HEADS // KV_HEADS
    out = F.scaled_dot_product_attention(
        query.float(),
        key.float().repeat_interleave(groups, dim=1),
        value.float().repeat_interleave(groups, dim=1),
        attn_mask=keep,
        scale=scaling,
    )
    return out.transpose(1, 2)


MODULE = SimpleNamespace(num_key_value_groups=HEADS // KV_HEADS, is_causal=True)


@pytest.mark.parametrize("mask_kind", ["bool", "additive", "none"])
def test_one_query_token_matches_sdpa_in_float32(mask_kind):
    query, key, value, keep = inputs(torch.float32)
    mask = {"bool": keep, "additive": torch.zeros(keep.shape).masked_fill(~keep, float("-inf")), "none": None}
    out, weights = decode_attention(MODULE, query, key, value, mask[mask_kind], scaling=0.3)
    expected = reference(query, key, value, keep if mask_kind != "none" else torch.ones_like(keep), 0.3)
    assert weights is None and out.shape == (BATCH, 1, HEADS, DIM)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_one_query_token_in_bfloat16_is_within_its_rounding():
    query, key, value, keep = inputs(torch.bfloat16)
    out, _ = decode_attention(MODULE, query, key, value, keep, scaling=None)
    expected = reference(query, key, value, keep, DIM**-0.5)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, atol=3e-2, rtol=3e-2)


def test_prompts_and_special_attention_go_to_sdpa(monkeypatch):
    import constitutional.models.attention as attention

    seen = []
    monkeypatch.setattr(attention, "sdpa_attention_forward", lambda *args, **kwargs: seen.append(kwargs) or "sdpa")
    query, key, value, keep = inputs(torch.float32, queries=4)
    assert decode_attention(MODULE, query, key, value, keep) == "sdpa"  # a prompt: several query tokens
    query, key, value, keep = inputs(torch.float32)
    assert decode_attention(MODULE, query, key, value, keep, softcap=30.0) == "sdpa"
    assert decode_attention(MODULE, query, key, value, keep.expand(-1, HEADS, -1, -1)) == "sdpa"  # a mask per head
    assert len(seen) == 3


def test_cpu_models_decode_with_it(tiny_model_path):
    model = load_model(ModelSpec(name=str(tiny_model_path), dtype="float32", device="cpu"))
    assert model.model.config._attn_implementation == NAME


@pytest.mark.parametrize("mask_kind", ["bool", "additive", "none"])
def test_keys_cut_from_a_larger_buffer_are_read_whole_with_the_rest_hidden(mask_kind):
    query, key, value, keep = inputs(torch.float32)
    mask = {"bool": keep, "additive": torch.zeros(keep.shape).masked_fill(~keep, float("-inf")), "none": None}
    buffers = [torch.zeros(BATCH, KV_HEADS, LENGTH + 5, DIM) for _ in range(2)]
    buffers[0][:, :, :LENGTH], buffers[1][:, :, :LENGTH] = key, value
    key_view, value_view = (buffer[:, :, :LENGTH] for buffer in buffers)
    whole_key, whole_value, whole_mask = whole_buffers(key_view, value_view, mask[mask_kind])
    assert whole_key.shape[2] == whole_value.shape[2] == whole_mask.shape[-1] == LENGTH + 5
    assert whole_key.is_contiguous() and whole_key.data_ptr() == buffers[0].data_ptr()  # read in place, no copy
    out, _ = decode_attention(MODULE, query, key_view, value_view, mask[mask_kind], scaling=0.3)
    torch.testing.assert_close(out, decode_attention(MODULE, query, key, value, mask[mask_kind], scaling=0.3)[0])


def test_only_views_of_the_beginning_of_a_buffer_are_widened():
    _, key, value, keep = inputs(torch.float32)
    buffer = torch.zeros(BATCH, KV_HEADS, LENGTH + 5, DIM)
    window = buffer[:, :, 5:]  # a sliding window's last positions: the memory after it is not its own
    assert whole_buffers(window, window, keep)[0] is window
    assert whole_buffers(key, value, keep)[0] is key  # already the whole buffer
