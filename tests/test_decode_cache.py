"""Generation into a cache of fixed size, and keys and values kept between calls: the same answers as before.

Every comparison runs in float32 on tiny models built here, where reading a token once or twice gives the same
numbers up to rounding, so greedy answers must be equal.
"""

from __future__ import annotations

import pytest
import torch
from test_hf_backend import GREEDY, PROMPTS, SHARED_CHATS, spy_on_prefill

from constitutional.models import ModelSpec, SamplingParams, load_model
from constitutional.models.hf import TransformersModel
from constitutional.models.kvcache import KeyValueStore, answer_read
from constitutional.models.prefix import MIN_SHARED_TOKENS

FOLLOW_UP = {"role": "user", "content": "Say it again, more briefly and more kindly."}


class GrowingCachePath(TransformersModel):
    """Generation as it was before the cache of fixed size: transformers' default cache, nothing kept."""

    def _generation_inputs(self, sequences, room):
        return self._inputs(sequences)

    def _remember(self, sequences, batch, generated):
        pass


@pytest.fixture
def model(tiny_model_path) -> TransformersModel:
    return load_model(ModelSpec(name=str(tiny_model_path), dtype="float32", device="cpu", batch_size=9))


def old_path(model: TransformersModel) -> TransformersModel:
    old = GrowingCachePath(model.name, model.model, model.tokenizer, model.batch_size)
    assert old.store is not None  # it has one, and never uses it
    return old


def test_greedy_answers_equal_the_growing_cache_path(model):
    prompts = [*PROMPTS, *SHARED_CHATS]  # plain rows and rows sharing beginnings, several batches
    expected = old_path(model).generate(prompts, GREEDY)
    assert len(set(expected)) >= 5
    assert model.generate(prompts, GREEDY) == expected


def test_sampled_answers_equal_the_growing_cache_path(model):
    params = SamplingParams(max_new_tokens=10, temperature=1.0, top_p=0.9, seed=7, stop=[])
    expected = old_path(model).generate(SHARED_CHATS, params)
    assert model.generate(SHARED_CHATS, params) == expected


def continuations(chats, answers):
    return [
        [*chat, {"role": "assistant", "content": answer}, FOLLOW_UP]
        for chat, answer in zip(chats, answers, strict=True)
    ]


def test_a_continuation_reads_only_its_new_tokens_and_answers_the_same(model):
    chats = SHARED_CHATS[:-1]
    first = model.generate(chats, GREEDY)
    follow = continuations(chats, first)
    # What the first call read, prompt and answer, is the beginning of the follow-up request.
    before = model.store.tokens_reused
    answers = model.generate(follow, GREEDY)
    reused = model.store.tokens_reused - before
    assert reused >= sum(len(model.render(chat)) for chat in chats)
    assert answers == old_path(model).generate(follow, GREEDY)
    assert answers == [old_path(model).generate([chat], GREEDY)[0] for chat in follow]


def test_stored_keys_and_values_equal_a_fresh_read(model):
    prompt = SHARED_CHATS[0]
    model.generate([prompt], GREEDY)
    tokens = model.render(prompt)
    stored = model.store.longest(tokens, len(tokens))
    assert stored is not None and stored[0][0].shape[-2] == len(tokens)
    with torch.no_grad():
        fresh = model.model(torch.tensor([tokens]), use_cache=True).past_key_values
    for (keys, values), layer in zip(stored, fresh.layers, strict=True):
        torch.testing.assert_close(keys, layer.keys[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(values, layer.values[0], atol=1e-5, rtol=1e-5)


def test_store_finds_the_longest_beginning_within_the_limit():
    store = KeyValueStore()
    row = list(range(10, 10 + 3 * MIN_SHARED_TOKENS))

    def kv(n: int, mark: float) -> torch.Tensor:
        return torch.full((2, 2, 1, n, 4), mark)  # 2 layers, keys and values, 1 head, n tokens, 4 dims

    store.add(row[: MIN_SHARED_TOKENS + 5], kv(MIN_SHARED_TOKENS + 5, 1.0))
    store.add(row[: 2 * MIN_SHARED_TOKENS], kv(2 * MIN_SHARED_TOKENS, 2.0))
    store.add([1, 2, 3] * MIN_SHARED_TOKENS, kv(3 * MIN_SHARED_TOKENS, 3.0))
    found = store.longest(row, limit=len(row) - 1)
    assert found[0][0].shape[-2] == 2 * MIN_SHARED_TOKENS and found[0][0].max() == 2.0
    limited = store.longest(row, limit=MIN_SHARED_TOKENS + 1)
    assert limited[0][0].shape[-2] == MIN_SHARED_TOKENS + 1
    assert store.longest(row[: MIN_SHARED_TOKENS - 1], limit=len(row)) is None  # too short to be worth it
    assert store.longest([7] * len(row), limit=len(row)) is None
    assert store.tokens_reused == 3 * MIN_SHARED_TOKENS + 1


def test_store_drops_the_least_recently_used_over_its_budget():
    one = torch.zeros((1, 2, 1, MIN_SHARED_TOKENS, 1))
    size = one.numel() * one.element_size()
    store = KeyValueStore(budget=2 * size)
    rows = [[k] * MIN_SHARED_TOKENS for k in range(3)]
    store.add(rows[0], one)
    store.add(rows[1], one)
    assert store.longest(rows[0], MIN_SHARED_TOKENS) is not None  # now the most recently used
    store.add(rows[2], one)
    assert len(store) == 2
    assert store.longest(rows[1], MIN_SHARED_TOKENS) is None
    assert store.longest(rows[0], MIN_SHARED_TOKENS) is not None
    store.add([9] * MIN_SHARED_TOKENS * 3, torch.zeros((1, 2, 1, 3 * MIN_SHARED_TOKENS, 1)))  # over the budget alone
    assert len(store) == 2


def sliding_window_model(tokenizer_path, directory, window: int) -> TransformersModel:
    """A tiny Mistral whose every layer attends to the last `window` positions only."""
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=window,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=0,
    )  # fmt: skip
    MistralForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return load_model(ModelSpec(name=str(directory), dtype="float32", device="cpu", batch_size=9))


def test_sliding_window_model_shares_beginnings_shorter_than_its_window(tiny_model_path, tmp_path, monkeypatch):
    model = sliding_window_model(tiny_model_path, tmp_path, window=256)  # longer than every prompt + answer
    assert model.store is None  # a window forgets what a later call would reuse
    alone = [model.generate([chat], GREEDY)[0] for chat in SHARED_CHATS]
    calls = spy_on_prefill(monkeypatch)
    assert model.generate(SHARED_CHATS, GREEDY) == alone
    assert calls


def test_sliding_window_shorter_than_the_shared_beginning_reads_rows_whole(tiny_model_path, tmp_path, monkeypatch):
    model = sliding_window_model(tiny_model_path, tmp_path, window=MIN_SHARED_TOKENS)
    calls = spy_on_prefill(monkeypatch)
    answers = model.generate(SHARED_CHATS, GREEDY)
    assert not calls
    assert answers == GrowingCachePath(model.name, model.model, model.tokenizer, 1).generate(SHARED_CHATS, GREEDY)


def test_the_answer_kept_ends_at_its_end_token_and_before_the_last_token():
    assert answer_read([5, 6, 7, 8], {2}) == [5, 6, 7]  # the last token was sampled, never read
    assert answer_read([5, 2, 0, 0], {2, 0}) == [5, 2]  # padding follows the end token
    assert answer_read([5, 6, 2], {2}) == [5, 6]
    assert answer_read([9], {2}) == []


def test_only_models_that_keep_every_position_get_a_store():
    from transformers import LlamaConfig, MistralConfig

    from constitutional.models.kvcache import holds_every_position

    assert holds_every_position(LlamaConfig(num_hidden_layers=2))
    # A sliding window forgets the beginning a later call would reuse.
    assert not holds_every_position(MistralConfig(num_hidden_layers=2, sliding_window=16))
