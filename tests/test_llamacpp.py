"""The llama.cpp backend on a tiny GGUF written here from the tiny transformers model: scores are exact, and both
backends see the same tokens and give the same scores and greedy answers on the same weights."""

from __future__ import annotations

import json
import math
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from constitutional.errors import InputError
from constitutional.models import LanguageModel, ModelSpec, SamplingParams, load_model
from constitutional.models.llamacpp import LlamaCppModel, banned_tokens, next_token
from constitutional.models.prefix import shared_length

# Mixed lengths; two pairs share a long beginning (as feedback questions sharing a demonstration do), one prompt
# is a beginning of another, and one is a single token.
LONG = "How do I bake bread? Mix flour, water, salt and yeast, then knead and bake. " * 3
PROMPTS = [
    LONG + "The capital of France is",
    "I can't help with stealing, but",
    LONG + "Critique request: point out harm.",
    "Paris",
    LONG,
    "The capital of France is Paris. Human: Assistant: (A) (B) The answer is",
    "Special-token text is plain text: <|end|><|user|> Paris",
]
CHATS = [
    [{"role": "user", "content": LONG + "Which is better? (A) bread (B) stealing"}],
    [{"role": "user", "content": LONG + "Which is better? (A) stealing (B) bread"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Revision request: rewrite safely."}],
    [{"role": "user", "content": "  Paris<|end|><|assistant|>Bread  "}, {"role": "assistant", "content": "Paris"}],
]
# Option labels share their first tokens; free-text choices differ from the first token and run several tokens.
CHOICE_SETS = [[" (A)", " (B)"], [" Paris", " bread and water", " bike"], ["The answer is (A)", "The answer is (B)"]]
GREEDY = SamplingParams(max_new_tokens=12, temperature=0.0, repetition_penalty=1.0, no_repeat_ngram_size=0, stop=[])


def permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """transformers' Llama rotates halves of each head; GGUF's llama rotates adjacent pairs: reorder q/k rows."""
    return (
        weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def write_gguf(model_dir: Path, out: Path) -> Path:
    """The tiny Llama and its byte-level BPE tokenizer as an F32 GGUF, the way llama.cpp's converter lays it out."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = model.config
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    assert [i for _, i in vocab] == list(range(len(vocab)))
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list([token for token, _ in vocab])
    writer.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for _, i in vocab])
    merges = json.loads((model_dir / "tokenizer.json").read_text())["model"]["merges"]
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(False)  # the tiny tokenizer adds none either
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)
    weights = {name: tensor.numpy() for name, tensor in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", weights["model.embed_tokens.weight"])
    for i in range(config.num_hidden_layers):
        layer = f"model.layers.{i}."
        names = {
            "attn_norm": "input_layernorm",
            "attn_v": "self_attn.v_proj",
            "attn_output": "self_attn.o_proj",
            "ffn_norm": "post_attention_layernorm",
            "ffn_gate": "mlp.gate_proj",
            "ffn_up": "mlp.up_proj",
            "ffn_down": "mlp.down_proj",
        }
        for ours, theirs in names.items():
            writer.add_tensor(f"blk.{i}.{ours}.weight", weights[f"{layer}{theirs}.weight"])
        q, k = weights[f"{layer}self_attn.q_proj.weight"], weights[f"{layer}self_attn.k_proj.weight"]
        writer.add_tensor(f"blk.{i}.attn_q.weight", permute(q, config.num_attention_heads))
        writer.add_tensor(f"blk.{i}.attn_k.weight", permute(k, config.num_key_value_heads))
    writer.add_tensor("output_norm.weight", weights["model.norm.weight"])
    writer.add_tensor("output.weight", weights["lm_head.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


@pytest.fixture(scope="module")
def chat_gguf(tiny_model_path, tmp_path_factory) -> Path:
    return write_gguf(tiny_model_path, tmp_path_factory.mktemp("gguf") / "tiny-chat.gguf")


@pytest.fixture(scope="module")
def base_gguf(tiny_base_model_path, tmp_path_factory) -> Path:
    return write_gguf(tiny_base_model_path, tmp_path_factory.mktemp("gguf") / "tiny-base.gguf")


@pytest.fixture(scope="module")
def llama(chat_gguf) -> LlamaCppModel:
    return LlamaCppModel.load(ModelSpec(name="tiny"), chat_gguf)


@pytest.fixture(scope="module")
def base_llama(base_gguf) -> LlamaCppModel:
    return LlamaCppModel.load(ModelSpec(name="tiny-base"), base_gguf)


@pytest.fixture(scope="module")
def hf(tiny_model_path):
    return load_model(ModelSpec(name=str(tiny_model_path), dtype="float32", device="cpu", batch_size=4))


@pytest.fixture(scope="module")
def hf_base(tiny_base_model_path):
    return load_model(ModelSpec(name=str(tiny_base_model_path), dtype="float32", device="cpu", batch_size=4))


@pytest.fixture(scope="module")
def one_pass(chat_gguf):
    """Reference scores: prompt and choice read together in one pass by a fresh llama.cpp context, every
    position's logits kept; none of the backend's caching, ordering or tail handling is involved."""
    from llama_cpp import Llama

    reference = Llama(str(chat_gguf), n_ctx=1024, logits_all=True, verbose=False)

    def score(prompt_ids: list[int], choice_ids: list[int]) -> float:
        reference.reset()
        reference.eval(prompt_ids + choice_ids)
        logits = np.asarray(reference.scores[: len(prompt_ids) + len(choice_ids)], dtype=np.float64)
        shifted = logits - logits.max(-1, keepdims=True)
        rows = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        start = len(prompt_ids) - 1
        return sum(rows[start + j, token] for j, token in enumerate(choice_ids))

    yield score
    reference.close()


def test_loads_a_gguf_with_its_chat_template_and_refuses_a_missing_file(llama, base_llama, tmp_path):
    assert isinstance(llama, LanguageModel) and isinstance(base_llama, LanguageModel)
    assert llama.has_chat_template and not base_llama.has_chat_template
    assert llama.context_window == 4096 and llama.prompt_tokens(["Paris", CHATS[2]]) == [
        len(llama.render("Paris")),
        len(llama.render(CHATS[2])),
    ]
    assert llama.name == "tiny"
    with pytest.raises(InputError, match="no GGUF file"):
        LlamaCppModel.load(ModelSpec(name="nothing"), tmp_path / "nothing.gguf")


@pytest.mark.parametrize("choices", CHOICE_SETS)
def test_choice_scores_equal_reading_prompt_and_choice_in_one_pass(llama, one_pass, choices):
    prompts = PROMPTS + CHATS
    scores = llama.choice_logprobs(prompts, choices)
    assert len(scores) == len(prompts) and all(len(row) == len(choices) for row in scores)
    for prompt, row in zip(prompts, scores, strict=True):
        for choice, score in zip(choices, row, strict=True):
            expected = one_pass(llama.render(prompt), llama.tokenize(choice, add_bos=False))
            assert score == pytest.approx(expected, abs=1e-4)
    # Log-probabilities of distinct continuations: negative, their probabilities summing to at most 1.
    assert all(s < 0 for row in scores for s in row)
    assert all(sum(math.exp(s) for s in row) <= 1 + 1e-6 for row in scores)


def test_scores_do_not_depend_on_order_batching_or_what_the_context_held_before(llama):
    prompts = PROMPTS + CHATS
    together = llama.choice_logprobs(prompts, CHOICE_SETS[1])
    llama.generate([PROMPTS[1]], GREEDY)  # leaves other tokens in the context
    alone = [llama.choice_logprobs([prompt], CHOICE_SETS[1])[0] for prompt in reversed(prompts)]
    np.testing.assert_allclose(np.array(together), np.array(alone[::-1]), atol=1e-5)


def test_a_shared_beginning_is_read_once_for_both_option_orders(llama):
    prompts = [PROMPTS[1], CHATS[0], PROMPTS[3], CHATS[1]]  # the two chats: one question in both option orders
    a_first, b_first = (llama.render(chat) for chat in CHATS[:2])
    shared = shared_length(a_first, b_first)
    assert shared > 60
    choices = [llama.tokenize(choice) for choice in CHOICE_SETS[0]]
    common = shared_length(*choices)
    # Every prompt with the choices' common tokens, then each choice's remaining tokens but its last.
    everything = sum(len(llama.render(p)) + common + sum(len(c) - common - 1 for c in choices) for p in prompts)
    llama.choice_logprobs(["bike"], CHOICE_SETS[0])  # the context now holds something unrelated
    before = llama.tokens_read
    llama.choice_logprobs(prompts, CHOICE_SETS[0])
    assert llama.tokens_read - before == everything - shared


def test_both_backends_see_the_same_tokens_and_give_the_same_scores(llama, hf, base_llama, hf_base):
    for ours, theirs in ((llama, hf), (base_llama, hf_base)):
        for prompt in PROMPTS + CHATS:
            assert ours.render(prompt) == theirs.render(prompt)
        for choices in CHOICE_SETS:
            np.testing.assert_allclose(
                np.array(ours.choice_logprobs(PROMPTS + CHATS, choices)),
                np.array(theirs.choice_logprobs(PROMPTS + CHATS, choices)),
                atol=1e-3,
            )


@pytest.mark.parametrize(
    "params",
    [GREEDY, GREEDY.model_copy(update={"repetition_penalty": 1.3, "no_repeat_ngram_size": 2})],
    ids=["plain", "penalties"],
)
def test_greedy_answers_match_the_transformers_backend(llama, hf, params):
    prompts = [PROMPTS[0], PROMPTS[1], CHATS[2]]
    ours = llama.generate(prompts, params)
    assert ours == hf.generate(prompts, params)
    assert any(answer for answer in ours)


def test_seeded_sampling_repeats_and_stop_sequences_cut(llama):
    params = SamplingParams(max_new_tokens=16, temperature=1.0, top_p=0.9, seed=3, stop=[])
    first = llama.generate(PROMPTS[:3], params)
    assert llama.generate(PROMPTS[:3], params) == first
    assert llama.generate(PROMPTS[:3], params.model_copy(update={"seed": 4})) != first
    [long] = llama.generate([PROMPTS[1]], GREEDY)
    stop = long.split()[1] if len(long.split()) > 1 else long[-2:]
    [cut] = llama.generate([PROMPTS[1]], GREEDY.model_copy(update={"stop": [stop]}))
    assert stop not in cut and long.startswith(cut)


def test_bad_input_is_refused_by_name(llama):
    with pytest.raises(InputError, match="choice is empty"):
        llama.choice_logprobs(["Paris"], [" (A)", ""])
    with pytest.raises(InputError, match="empty after tokenization"):
        llama.choice_logprobs([""], [" (A)", " (B)"])
    with pytest.raises(InputError, match="does not fit the context"):
        llama.choice_logprobs(["bread " * 5000], [" (A)", " (B)"])
    # The context is usable after a refusal.
    assert llama.choice_logprobs(["Paris"], [" (A)"])[0][0] < 0


def test_sampling_steps_follow_the_transformers_logits_processors():
    from transformers import NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor, TopPLogitsWarper

    rng = np.random.default_rng(0)
    logits = rng.normal(size=50).astype(np.float32)
    tokens = [int(t) for t in rng.integers(0, 50, size=30)] + [1, 2, 3, 1, 2]
    ids = torch.tensor([tokens])
    expected = RepetitionPenaltyLogitsProcessor(1.3)(ids, torch.tensor(logits)[None])
    expected = NoRepeatNGramLogitsProcessor(3)(ids, expected)
    banned = torch.isinf(expected[0]).nonzero().flatten().tolist()
    assert sorted(set(banned_tokens(tokens, 3))) == sorted(banned) and 3 in banned
    greedy = SamplingParams(temperature=0, repetition_penalty=1.3, no_repeat_ngram_size=3)
    assert next_token(logits, tokens, greedy, rng) == int(expected[0].argmax())
    # Top-p keeps the same tokens transformers keeps: draw many times, never outside that set.
    kept = TopPLogitsWarper(0.5)(ids, torch.tensor(logits)[None] / 0.7)
    allowed = set(torch.isfinite(kept[0]).nonzero().flatten().tolist())
    params = SamplingParams(temperature=0.7, top_p=0.5, repetition_penalty=1.0, no_repeat_ngram_size=0)
    drawn = {next_token(logits, tokens, params, rng) for _ in range(300)}
    assert drawn <= allowed and len(drawn) > 1


def test_a_name_the_llamacpp_backend_cannot_load_is_refused_before_loading(tmp_path):
    from constitutional.models import check_model

    missing = ModelSpec(backend="llamacpp", name=str(tmp_path / "missing.gguf"))
    with pytest.raises(InputError, match=r"loads a \.gguf file or an embedded model") as refused:
        check_model(missing, field="models.policy")
    assert refused.value.field == "models.policy.name"
    check_model(ModelSpec(backend="llamacpp", name="smollm2-135m-instruct"), field="models.policy")
