"""The transformers backend on a tiny random model: batching keeps order and results, scoring is exact."""

from __future__ import annotations

import pytest
import torch

from constitutional.errors import InputError
from constitutional.models import ModelSpec, SamplingParams, load_model
from constitutional.models.base import cut_at_stop, render_transcript
from constitutional.models.hf import TransformersModel
from constitutional.models.prefix import MIN_SHARED_TOKENS

# Mixed lengths, more prompts than the batch size, deliberately not sorted by length.
PROMPTS = [
    "How do I bake bread? Mix flour, water, salt and yeast",
    "Paris",
    "I can't help with stealing, but",
    "The capital of France is",
    "Critique request: point out harm. Revision request: rewrite safely. Human: Assistant: (A)",
    "bike",
]
CHAT = [{"role": "user", "content": "How do I bake bread?"}]
CORPUS_LINE = "How do I bake bread? Mix flour, water, salt and yeast, then knead and bake. "
# Two demonstrations long enough to be read once per group, four requests after each, one unrelated request.
DEMOS = [
    [{"role": "user", "content": CORPUS_LINE * 2}, {"role": "assistant", "content": "Mix flour and water."}],
    [{"role": "user", "content": "Revision request: rewrite safely. " * 4}, {"role": "assistant", "content": "Paris"}],
]
SHARED_CHATS = [[*demo, {"role": "user", "content": p}] for demo in DEMOS for p in PROMPTS[:4]] + [CHAT]
# Greedy and free of the per-sequence penalties, so one prompt's answer depends on nothing else.
GREEDY = SamplingParams(max_new_tokens=12, temperature=0.0, repetition_penalty=1.0, no_repeat_ngram_size=0, stop=[])


@pytest.fixture(scope="module")
def chat_model(tiny_model_path) -> TransformersModel:
    return load_model(ModelSpec(name=str(tiny_model_path), dtype="float32", device="cpu", batch_size=2))


@pytest.fixture(scope="module")
def base_model(tiny_base_model_path) -> TransformersModel:
    return load_model(ModelSpec(name=str(tiny_base_model_path), dtype="float32", device="cpu", batch_size=2))


@pytest.fixture(scope="module")
def absolute_position_model(tiny_model_path, tmp_path_factory) -> TransformersModel:
    """A tiny GPT-2 (learned absolute positions) on the fixture's tokenizer.

    Llama's rotary embeddings only see relative positions, so shifting every position by the padding length
    changes nothing there; with absolute positions, scores are right only if position ids skip the padding.
    """
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    directory = tmp_path_factory.mktemp("tiny-gpt2")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=256, n_embd=32, n_layer=2, n_head=4,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        model.transformer.wpe.weight.normal_(std=1.0)  # strong position signal, so a shift cannot hide
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return load_model(ModelSpec(name=str(directory), dtype="float32", device="cpu", batch_size=3))


def build_short_context_model(tokenizer_path, directory, positions: int) -> TransformersModel:
    """A tiny GPT-2 that reads at most `positions` tokens (learned positions: one more and it fails)."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=positions, n_embd=16, n_layer=1, n_head=2,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return load_model(ModelSpec(name=str(directory), dtype="float32", device="cpu", batch_size=4))


def test_context_window_and_prompt_tokens(tiny_model_path, chat_model, tmp_path):
    short = build_short_context_model(tiny_model_path, tmp_path, positions=48)
    assert short.context_window == 48 and chat_model.context_window == 4096
    prompts = ["Paris", CHAT, [*CHAT, {"role": "assistant", "content": "Mix flour, water, salt and yeast."}]]
    counts = short.prompt_tokens(prompts)
    assert counts == [len(short.render(p)) for p in prompts] and counts[0] < counts[1] < counts[2]
    assert short.prompt_tokens([]) == []


@pytest.fixture(scope="module")
def unbatched(chat_model) -> list[str]:
    return [chat_model.generate([prompt], GREEDY)[0] for prompt in PROMPTS]


def test_loads_as_float32_with_left_padding(chat_model):
    assert isinstance(chat_model, TransformersModel)
    assert chat_model.model.dtype == torch.float32
    assert chat_model.tokenizer.padding_side == "left"
    assert chat_model.batch_size == 2
    assert chat_model.has_chat_template


def test_missing_model_is_input_error(tmp_path):
    with pytest.raises(InputError, match="cannot load model"):
        load_model(ModelSpec(name=str(tmp_path / "absent"), dtype="float32", device="cpu"))


def test_batched_greedy_equals_unbatched_in_input_order(chat_model, unbatched):
    # Distinct answers, so a shuffled order could not go unnoticed.
    assert len(set(unbatched)) >= 3
    batched = chat_model.generate(PROMPTS, GREEDY)
    assert len(batched) == len(PROMPTS)
    assert batched == unbatched


def test_batched_chat_prompts_equal_unbatched(chat_model):
    chats = [[{"role": "user", "content": p}] for p in PROMPTS[:5]]
    alone = [chat_model.generate([c], GREEDY)[0] for c in chats]
    assert chat_model.generate(chats, GREEDY) == alone


def test_empty_prompt_list(chat_model):
    assert chat_model.generate([], GREEDY) == []
    assert chat_model.choice_logprobs([], [" (A)"]) == []


def _stop_inside_answer(prompt: str, full: str) -> tuple[str, int] | None:
    """A 3-character stop string whose first occurrence lies inside the answer, not across the prompt boundary."""
    for k in range(1, len(full) - 3):
        stop = full[k : k + 3]
        if not (stop.isascii() and stop.isprintable() and stop.strip()):
            continue
        if all((prompt + sep + full).find(stop) == len(prompt) + len(sep) + k for sep in ("", " ")):
            return stop, k
    return None


def test_stop_strings_cut_text(chat_model, unbatched):
    found = [(i, _stop_inside_answer(PROMPTS[i], full)) for i, full in enumerate(unbatched)]
    index, (stop, k) = next((i, hit) for i, hit in found if hit)
    full = unbatched[index]
    cut = chat_model.generate([PROMPTS[index]], GREEDY.model_copy(update={"stop": [stop]}))[0]
    assert stop not in cut
    assert cut == full[:k].strip()
    assert len(cut) < len(full)


def test_stop_string_spanning_prompt_boundary_does_not_truncate(chat_model):
    prompt = "The capital of France is"
    full = chat_model.generate([prompt], GREEDY)[0]
    if not full.startswith("is is"):
        pytest.skip(f"premise (this random model answers ' is is ...') does not hold: {full!r}")
    # "...France is" + " is" contains "s i" across the boundary; inside the answer it first occurs at index 1.
    cut = chat_model.generate([prompt], GREEDY.model_copy(update={"stop": ["s i"]}))[0]
    assert cut == full[: full.index("s i")].strip()


def test_seeded_sampling_is_reproducible(chat_model):
    params = SamplingParams(max_new_tokens=8, temperature=1.0, top_p=1.0, seed=3, stop=[])
    assert chat_model.generate(PROMPTS, params) == chat_model.generate(PROMPTS, params)


def manual_score(model: TransformersModel, prompt, choice: str) -> float:
    """Log-probability of `choice` after `prompt` from an unpadded forward pass over that one sequence."""
    prompt_ids = model.render(prompt)
    choice_ids = model.tokenizer(choice, add_special_tokens=False)["input_ids"]
    ids = prompt_ids + choice_ids
    with torch.no_grad():
        logits = model.model(torch.tensor([ids])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return sum(logprobs[t - 1, ids[t]].item() for t in range(len(prompt_ids), len(ids)))


CHOICE_SETS = {
    "unrelated": [" (A)", " (B)", " The answer is Paris"],
    "shared start, long tails": [" The answer is (A) for sure", " The answer is (B)", " The answer is"],
}


@pytest.mark.parametrize("choice_set", CHOICE_SETS)
@pytest.mark.parametrize("which", ["chat_model", "base_model", "absolute_position_model"])
def test_choice_logprobs_match_unpadded_computation(request, which, choice_set):
    model = request.getfixturevalue(which)
    # Choices of different token lengths, prompts of different lengths (text and chat) in the same batches;
    # shared first tokens are scored once on the prompt, the tails on its cache: both must equal a plain pass.
    choices = CHOICE_SETS[choice_set]
    prompts = [*PROMPTS, CHAT]
    lengths = {len(model.tokenizer(c, add_special_tokens=False)["input_ids"]) for c in choices}
    assert len(lengths) > 1
    assert len({len(model.render(p)) for p in prompts}) > 1
    scores = model.choice_logprobs(prompts, choices)
    assert len(scores) == len(prompts)
    assert all(len(row) == len(choices) for row in scores)
    for prompt, row in zip(prompts, scores, strict=True):
        for choice, score in zip(choices, row, strict=True):
            assert score < 0
            assert score == pytest.approx(manual_score(model, prompt, choice), abs=1e-4)


def test_choice_logprobs_empty_choice_rejected(chat_model):
    with pytest.raises(InputError, match="empty"):
        chat_model.choice_logprobs(["Hi"], [" (A)", ""])


def test_chat_prompt_on_base_model_renders_as_transcript(base_model):
    assert not base_model.has_chat_template
    messages = [
        {"role": "user", "content": "How do I bake bread?"},
        {"role": "assistant", "content": "Mix flour and water."},
        {"role": "user", "content": "Then?"},
    ]
    expected = "\n\nHuman: How do I bake bread?\n\nAssistant: Mix flour and water.\n\nHuman: Then?\n\nAssistant:"
    assert render_transcript(messages) == expected
    assert base_model.render(messages) == base_model.tokenizer(expected)["input_ids"]
    decoded = base_model.tokenizer.decode(base_model.render(messages), skip_special_tokens=True)
    assert decoded.endswith(expected)
    assert len(base_model.generate([messages], GREEDY)) == 1


def test_chat_prompt_on_chat_model_uses_template(chat_model):
    decoded = chat_model.tokenizer.decode(chat_model.render(CHAT))
    assert decoded == "<|user|>How do I bake bread?<|end|><|assistant|>"
    assert "Human:" not in decoded


def test_render_transcript_system_message():
    text = render_transcript([{"role": "system", "content": " Be kind. "}, {"role": "user", "content": "Hi"}])
    assert text == "\n\nBe kind.\n\nHuman: Hi\n\nAssistant:"


def test_cut_at_stop_earliest_marker():
    assert cut_at_stop(" Sure. Here.\nUser: more\n\nHuman: x", ["\n\nHuman:", "\nUser:"]) == "Sure. Here."
    assert cut_at_stop("  no markers  ", ["\n\nHuman:"]) == "no markers"
    assert cut_at_stop("abc", []) == "abc"


def spy_on_prefill(monkeypatch) -> list:
    """Every pass over shared beginnings, with its groups."""
    calls = []
    original = TransformersModel._read_beginnings

    def spy(self, sequences, groups, keep):
        calls.append(groups)
        return original(self, sequences, groups, keep)

    monkeypatch.setattr(TransformersModel, "_read_beginnings", spy)
    return calls


@pytest.fixture(scope="module")
def wide_model(tiny_model_path) -> TransformersModel:
    return load_model(ModelSpec(name=str(tiny_model_path), dtype="float32", device="cpu", batch_size=8))


@pytest.mark.parametrize("which", ["wide_model", "absolute_position_model"])
def test_shared_beginnings_read_once_give_the_same_answers(request, which, monkeypatch):
    model = request.getfixturevalue(which)
    monkeypatch.setattr(model, "store", None)  # nothing read by an earlier call: only this batch shares
    alone = [model.generate([c], GREEDY)[0] for c in SHARED_CHATS]
    monkeypatch.setattr(model, "batch_size", 9)  # every request in one batch, so both groups share it
    assert all(len(model.render(c)) > MIN_SHARED_TOKENS + 10 for c in SHARED_CHATS[:-1])
    calls = spy_on_prefill(monkeypatch)
    batched = model.generate(SHARED_CHATS, GREEDY)
    assert calls and sorted(len(g.rows) for g in calls[0] if g.length) == [4, 4]
    assert len(set(batched)) >= 3
    assert batched == alone


@pytest.mark.parametrize("choice_set", CHOICE_SETS)
@pytest.mark.parametrize("which", ["wide_model", "absolute_position_model"])
def test_choice_logprobs_with_shared_beginnings_match_unpadded_computation(request, which, monkeypatch, choice_set):
    model = request.getfixturevalue(which)
    monkeypatch.setattr(model, "batch_size", 9)
    calls = spy_on_prefill(monkeypatch)
    scores = model.choice_logprobs(SHARED_CHATS, CHOICE_SETS[choice_set])
    assert calls
    for prompt, row in zip(SHARED_CHATS, scores, strict=True):
        for choice, score in zip(CHOICE_SETS[choice_set], row, strict=True):
            assert score == pytest.approx(manual_score(model, prompt, choice), abs=1e-4)
