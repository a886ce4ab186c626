"""Attention for one new token per row on a CPU: two batched matmuls over the key/value heads, no kernel overhead.

A decode step's query is one token; PyTorch's CPU SDPA kernel spent ~0.85 ms a layer on it at batch 20 over an
800-position cache (SmolLM2: 9 query heads sharing 3 key/value heads), where a matmul for the scores and one for
the values took ~0.26 ms, close to the time of reading the cache once. On the demo's SL-CAI calls that took a
decode step from 70 to 49 ms. Prompts (more than one query token) still go to SDPA.

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
    grouped = query.reshape(batch, kv_heads, heads // kv_heads, dim)  # the query heads each key head serves
    scores = torch.matmul(grouped, key.transpose(-1, -2)).float() * (dim**-0.5 if scaling is None else scaling)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, float("-inf"))
        else:
            scores = scores + attention_mask
    weights = torch.softmax(scores, dim=-1).to(value.dtype)
    return torch.matmul(weights, value).reshape(batch, 1, heads, dim), None


AttentionInterface.register(NAME, decode_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)  # it takes SDPA's masks


def use_decode_attention(model: PreTrainedModel) -> None:
    """Switch a CPU model that attends with SDPA through the interface to `decode_attention`; others stay."""
    if model.device.type != "cpu" or model.config._attn_implementation != "sdpa":
        return
    if model._can_set_attn_implementation():
        model.set_attn_implementation(NAME)
