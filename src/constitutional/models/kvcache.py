"""Keys and values for generation: a cache written in place, and the sequences earlier calls read, kept for reuse.

A decode step with transformers' default cache concatenates every layer's keys and values with the new token's,
copying the whole cache at every step; at batch 20 on ~600-token SL-CAI prompts that was most of a step on 2 CPU
cores (183 ms against 60 ms with a cache written in place). Generation therefore writes to buffers sized once for
the prompt and the answer (`FilledInPlace`), and attention reads the positions written so far: the same tensors,
shapes and so the same arithmetic as the growing cache (transformers' `StaticCache` attends over every position of
its buffers, which changed bf16 rounding enough to flip near-tied greedy choices).

SL-CAI's revision request is the critique request, the critique the model just wrote and one more turn: on the
demo ~520 of its ~575 tokens were read, in the same order, by the call before. Prompt reading does not batch on
a CPU (it is compute-bound), so the store keeps what recent calls read and a prompt that continues a stored
sequence reads only its new tokens. vLLM's automatic prefix caching does the same on its paged cache.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from constitutional.memory import GENERATION_STORE_BYTES
from constitutional.models.prefix import MIN_SHARED_TOKENS

# Each layer's keys and values for some positions of one row, (heads, tokens, head_dim) each.
KeysValues = list[tuple[torch.Tensor, torch.Tensor]]


class KeyValueStore:
    """The keys and values of sequences read recently, up to a budget of bytes; the oldest used go first."""

    def __init__(self, budget: int = GENERATION_STORE_BYTES):
        self.budget = budget
        self._entries: OrderedDict[int, tuple[np.ndarray, torch.Tensor]] = OrderedDict()
        self._bytes = 0
        self._added = 0
        self.tokens_reused = 0  # tokens prompts did not read again, for benchmarks and tests

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, tokens: Sequence[int], keys_values: torch.Tensor) -> None:
        """Keep `keys_values` ((layers, 2, heads, len(tokens), head_dim)) as what reading `tokens` gives."""
        size = keys_values.numel() * keys_values.element_size()
        if size > self.budget:
            return
        self._entries[self._added] = (np.asarray(tokens, dtype=np.int64), keys_values)
        self._added += 1
        self._bytes += size
        while self._bytes > self.budget:
            _, (_, dropped) = self._entries.popitem(last=False)
            self._bytes -= dropped.numel() * dropped.element_size()

    def longest(self, tokens: Sequence[int], limit: int, minimum: int = MIN_SHARED_TOKENS) -> KeysValues | None:
        """Keys and values of the longest stored beginning of `tokens`, at most `limit` tokens; None if shorter than
        `minimum` (for generation, a short reuse saves less than the padding it brings to the batch)."""
        query = np.asarray(tokens[:limit], dtype=np.int64)
        best, best_length = None, minimum - 1
        for key, (stored, _) in self._entries.items():
            n = min(len(stored), len(query))
            if n <= best_length:
                continue
            differ = np.flatnonzero(stored[:n] != query[:n])
            length = int(differ[0]) if differ.size else n
            if length > best_length:
                best, best_length = key, length
        if best is None:
            return None
        self._entries.move_to_end(best)
        self.tokens_reused += best_length
        keys_values = self._entries[best][1]
        return [(layer[0, :, :best_length], layer[1, :, :best_length]) for layer in keys_values]


class FilledInPlace(DynamicLayer):
    """A growing cache layer whose keys and values live in buffers allocated once for `capacity` positions: an
    update writes the new positions in place, and the layer shows the positions written so far (views)."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        # Zeros, not empty: decode attention reads the positions not written yet too, with a weight of 0.
        self._key_buffer = key_states.new_zeros((*key_states.shape[:2], self.capacity, key_states.shape[-1]))
        self._value_buffer = value_states.new_zeros((*value_states.shape[:2], self.capacity, value_states.shape[-1]))
        self._written = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start, end = self._written, self._written + key_states.shape[-2]
        if end > self.capacity:
            raise ValueError(f"the cache holds {self.capacity} positions, not {end}")
        self._key_buffer[:, :, start:end] = key_states
        self._value_buffer[:, :, start:end] = value_states
        self._written = end
        self.keys, self.values = self._key_buffer[:, :, :end], self._value_buffer[:, :, :end]
        return self.keys, self.values


def holds_every_position(config) -> bool:
    """Whether every layer of the model keeps every position (no sliding window): only then can a row's keys and
    values be cut out of the cache and reused."""
    return all(type(layer) is DynamicLayer for layer in DynamicCache(config=config).layers)


def filled_cache(config, beginnings: Sequence[KeysValues | None], width: int, length: int) -> DynamicCache:
    """A cache with room for `length` positions holding each row's beginning right-aligned at `width` (rows
    left-padded, as the attention mask says); None is a row with nothing read yet. Sliding-window layers keep
    transformers' own kind (they hold at most a window)."""
    cache = DynamicCache(config=config)
    cache.layers = [FilledInPlace(length) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    if width == 0:
        return cache
    for layer, (keys, values) in enumerate(left_padded(beginnings, width)):
        cache.update(keys, values, layer)
    return cache


def left_padded(beginnings: Sequence[KeysValues | None], width: int) -> KeysValues:
    """Per layer, (rows, heads, width, head_dim) keys and values holding each row's beginning right-aligned, zeros
    before it (None: a row with nothing read); `width` > 0 and some row has a beginning."""
    known = next(b for b in beginnings if b is not None)
    padded = []
    for layer, (sample_keys, sample_values) in enumerate(known):
        keys = sample_keys.new_zeros((len(beginnings), sample_keys.shape[0], width, sample_keys.shape[-1]))
        values = sample_values.new_zeros((len(beginnings), sample_values.shape[0], width, sample_values.shape[-1]))
        for row, beginning in enumerate(beginnings):
            if beginning is not None:
                row_keys, row_values = beginning[layer]
                keys[row, :, width - row_keys.shape[-2] :] = row_keys
                values[row, :, width - row_values.shape[-2] :] = row_values
        padded.append((keys, values))
    return padded


def answer_read(answer: list[int], end_tokens: set[int]) -> list[int]:
    """The generated tokens whose keys and values the cache holds: up to the answer's end token (after it comes
    padding), never the last token generated (it was sampled, not read)."""
    length = next((i + 1 for i, token in enumerate(answer) if token in end_tokens), len(answer))
    return answer[: min(length, len(answer) - 1)]


def keep_rows(
    store: KeyValueStore,
    cache: DynamicCache,
    mask: torch.Tensor,
    prompts: Sequence[list[int]],
    answers: list[list[int]],
) -> None:
    """Store each row's prompt and answer with their keys and values: the prompt's at the positions `mask` marks
    (the rest is padding), the answer's right after the `mask.shape[1]` positions the prompts took."""
    read = mask.shape[1]
    for row, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        generated = torch.arange(read, read + len(answer), device=mask.device)
        positions = torch.cat([mask[row].nonzero().squeeze(1), generated])
        keys_values = torch.stack(
            [
                torch.stack([layer.keys[row].index_select(1, positions), layer.values[row].index_select(1, positions)])
                for layer in cache.layers
            ]
        )
        store.add([*prompt, *answer], keys_values)
