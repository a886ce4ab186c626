"""Attention for one new token per row on a CPU: two batched matmuls over the key/value heads, no kernel overhead.

A decode step's query is one token; PyTorch's CPU SDPA kernel spent ~0.85 ms a layer on it at batch 20 over an
800-position cache (SmolLM2: 9 query heads sharing 3 key/value heads), where a matmul for the scores and one for
the values took ~0.26 ms, close to the time of reading the cache once. On the demo's SL-CAI calls that took a
decode step from 70 to 49 ms. Prompts (more than one query token) still go to SDPA.

The cache written in place (kvcache.py) hands attention the positions written so far as a view of a larger
buffer; a batched matmul copies such a view whole before reading it (1.37 ms against 0.22 ms for the scores at
batch 20 over 600 of 700 positions). So the matmuls read the whole buffer, and the mask hides the positions not
written yet (zeros, so their weight of 0 leaves the values' sum as it is).

The arithmetic is transformers' own eager attention (scores in the model's dtype, softmax in float32, the weights
cast back for the values), with each key/value head read once by the query heads that share it instead of being
copied for each. It is registered with transformers' AttentionInterface under its own name and used only on CPU,
only by models that dispatch attention through that interface and use SDPA.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

NAME = "sdpa_cpu_decode"
# Attention variants the plain two-matmul form does not compute; they stay with SDPA.
_SPECIAL = ("softcap", "s_aux", "sinks", "position_bias")


def decode_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' attention signature: query (batch, heads, 1, dim), key/value (batch, kv_heads, length, dim),
    an additive or boolean mask broadcastable to (batch, 1, 1, length); returns (batch, 1, heads, dim)."""
    per_head_mask = attention_mask is not None and attention_mask.shape[1] != 1
    if query.shape[2] != 1 or dropout or per_head_mask or any(kwargs.get(name) is not None for name in _SPECIAL):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    batch, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    key, value, attention_mask = whole_buffers(key, value, attention_mask)
    grouped = query.reshape(batch, kv_heads, heads // kv_heads, dim)  # the query heads each key head serves
    scores = torch.matmul(grouped, key.transpose(-1, -2)).float() * (dim**-0.5 if scaling is None else scaling)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, float("-inf"))
        else:
            scores = scores + attention_mask
    weights = torch.softmax(scores, dim=-1).to(value.dtype)
    return torch.matmul(weights, value).reshape(batch, 1, heads, dim), None


def whole_buffers(key, value, attention_mask):
    """Keys and values as the whole buffers they were cut from, with the mask hiding the positions past the cut;
    unchanged unless both are the first positions of contiguous buffers of one size (what kvcache.FilledInPlace
    hands out), so anything read is memory the buffers own."""
    batch, kv_heads, length, dim = key.shape
    capacity = key.stride(1) // dim
    if capacity <= length or not (_prefix_view(key, capacity) and _prefix_view(value, capacity)):
        return key, value, attention_mask
    if attention_mask is None:  # every position written so far is seen (SDPA's masks leave it out then)
        attention_mask = torch.ones((1, 1, 1, length), dtype=torch.bool, device=key.device)
    elif attention_mask.shape[-1] != length:
        return key, value, attention_mask
    hidden = False if attention_mask.dtype == torch.bool else float("-inf")
    mask = torch.nn.functional.pad(attention_mask, (0, capacity - length), value=hidden)
    whole = (batch, kv_heads, capacity, dim)
    return key.as_strided(whole, key.stride()), value.as_strided(whole, value.stride()), mask


def _prefix_view(tensor: torch.Tensor, capacity: int) -> bool:
    """Whether `tensor` (batch, heads, length, dim) is positions 0..length of a contiguous (batch, heads, capacity,
    dim) buffer starting at the beginning of its storage."""
    batch, heads, _, dim = tensor.shape
    contiguous = (heads * capacity * dim, capacity * dim, dim, 1)
    owned = tensor.untyped_storage().nbytes() >= batch * heads * capacity * dim * tensor.element_size()
    return tensor.stride() == contiguous and tensor.storage_offset() == 0 and owned


AttentionInterface.register(NAME, decode_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)  # it takes SDPA's masks


def use_decode_attention(model: PreTrainedModel) -> None:
    """Switch a CPU model that attends with SDPA through the interface to `decode_attention`; others stay."""
    if model.device.type != "cpu" or model.config._attn_implementation != "sdpa":
        return
    if model._can_set_attn_implementation():
        model.set_attn_implementation(NAME)
