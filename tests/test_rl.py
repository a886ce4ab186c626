"""RL against the preference model: RLOO/GRPO move the policy, DPO lowers its loss, bad settings are refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from constitutional.errors import InputError
from constitutional.records import ComparisonRecord
from constitutional.rl import LABEL_STAGE, MODEL_DIR, PM_DIR, SL_MODEL_DIR, RLConfig, check_groups, dpo_rows, train
from constitutional.store import RunStore

PROMPTS = [f"Question number {i}: how do I bake bread?" for i in range(8)]


def _prompt_file(directory: Path) -> str:
    path = directory / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return str(path)


def _foreign_tokenizer(chat_template: str | None):
    """A tokenizer trained on other text with another vocabulary size: ids do not line up with the policy's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE(unk_token=None))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    specials = ["<|end|>", "<pad>", "<|user|>", "<|assistant|>"]
    corpus = ["Completely different words for a reward model's own vocabulary."] * 10
    raw.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=290, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", eos_token="<|end|>")
    tokenizer.chat_template = chat_template
    return tokenizer


def _template(model_path: Path) -> str:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path).chat_template


def build_preference_model(run_dir: Path, policy: Path, tokenizer=None) -> Path:
    """A tiny num_labels=1 sequence classifier saved where the pm_train stage puts the preference model."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tokenizer = tokenizer or AutoTokenizer.from_pretrained(policy)
    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForSequenceClassification(config)
    # A clearly non-zero score head, so completions get different rewards and RLOO has advantages to follow.
    torch.nn.init.normal_(model.score.weight, std=1.0)
    path = run_dir / PM_DIR
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _config(tmp_path: Path, **fields) -> RLConfig:
    defaults = {
        "red_team_prompts": _prompt_file(tmp_path),
        "helpful_prompts": None,
        "max_steps": 3,
        "batch_size": 4,
        "num_generations": 2,
        "max_completion_length": 8,
        "learning_rate": 5e-2,
        "lora_r": 4,
        "lora_alpha": 8,
    }
    return RLConfig(**(defaults | fields))


def _moved(before: Path, after: Path) -> bool:
    old, new = load_file(before / "model.safetensors"), load_file(after / "model.safetensors")
    assert old.keys() == new.keys()
    return any(not torch.equal(old[k], new[k]) for k in old)


@pytest.mark.parametrize("algo", ["rloo", "grpo"])
def test_online_rl_moves_the_policy_and_saves_safetensors(tmp_path, tiny_model_path, algo):
    with RunStore(tmp_path / "run") as store:
        build_preference_model(store.dir, tiny_model_path)
        summary = train(store, str(tiny_model_path), _config(tmp_path, algo=algo), seed=0)
    output = tmp_path / "run" / MODEL_DIR
    assert summary["algo"] == algo and summary["steps"] == 3 and summary["start"] == str(tiny_model_path)
    assert summary["first_reward"] is not None and summary["last_reward"] is not None
    assert summary["pm_tokenizer"] == "same as the policy's"
    assert _moved(tiny_model_path, output)
    assert not any("lora" in key for key in load_file(output / "model.safetensors"))  # merged, not adapters
    assert (output / "tokenizer.json").exists() and "RL-CAI policy" in (output / "README.md").read_text()
    log = json.loads((output / "training_log.json").read_text())
    assert sum("reward" in entry for entry in log) == 3


def test_rl_starts_from_the_sl_model_when_the_run_has_one(tmp_path, tiny_model_path):
    with RunStore(tmp_path / "run") as store:
        shutil.copytree(tiny_model_path, store.dir / SL_MODEL_DIR)
        build_preference_model(store.dir, tiny_model_path)
        summary = train(store, "no-such-model", _config(tmp_path, max_steps=1), seed=0)
    assert summary["start"] == str(tmp_path / "run" / SL_MODEL_DIR)


def test_start_from_sl_without_an_sl_model_is_refused(tmp_path, tiny_model_path):
    with RunStore(tmp_path / "run") as store, pytest.raises(InputError, match="cai sl train"):
        train(store, str(tiny_model_path), _config(tmp_path, start_from="sl"), seed=0)


def test_a_preference_model_with_another_tokenizer_scores_re_tokenized_text(tmp_path, tiny_model_path):
    with RunStore(tmp_path / "run") as store:
        build_preference_model(store.dir, tiny_model_path, _foreign_tokenizer(_template(tiny_model_path)))
        summary = train(store, str(tiny_model_path), _config(tmp_path, max_steps=1), seed=0)
    assert summary["pm_tokenizer"] == "re-tokenized" and summary["first_reward"] is not None


def test_chat_policy_with_a_template_less_preference_model_is_refused(tmp_path, tiny_model_path):
    with RunStore(tmp_path / "run") as store:
        build_preference_model(store.dir, tiny_model_path, _foreign_tokenizer(None))
        with pytest.raises(InputError, match="no chat template") as err:
            train(store, str(tiny_model_path), _config(tmp_path), seed=0)
    assert err.value.field == "chat_template"


def test_missing_preference_model_says_which_command_makes_it(tmp_path, tiny_model_path):
    with RunStore(tmp_path / "run") as store, pytest.raises(InputError, match="cai pm train"):
        train(store, str(tiny_model_path), _config(tmp_path), seed=0)


@pytest.mark.parametrize(
    ("fields", "field", "fix"),
    [
        ({"num_generations": 1, "batch_size": 4}, "rl.num_generations", "--num-generations 2"),
        ({"num_generations": 4, "batch_size": 6}, "rl.batch_size", "--batch-size 8"),
        ({"num_generations": 4, "batch_size": 2, "gradient_accumulation_steps": 3}, "rl.batch_size", "--batch-size 4"),
    ],
)
def test_incomplete_generation_groups_are_refused(fields, field, fix):
    with pytest.raises(InputError) as err:
        check_groups(RLConfig(**fields))
    assert err.value.field == field and "num_generations" in str(err.value) and fix in str(err.value)


def test_whole_groups_pass():
    check_groups(RLConfig(num_generations=4, batch_size=2, gradient_accumulation_steps=2))


def _comparison(i: int, p_a: float) -> ComparisonRecord:
    good, bad = f"Knead the dough, then bake it {i}.", f"bread bread bread {i}"
    return ComparisonRecord(
        id=f"c-{i}",
        kind="helpful",
        prompt=[{"role": "user", "content": f"How do I bake bread? {i}"}],
        a=good if p_a >= 0.5 else bad,
        b=bad if p_a >= 0.5 else good,
        principles=["helpful"],
        p_a=p_a,
        p_a_first=p_a,
        logprobs=[[-0.1, -2.0]],
        constitution="harmless@1.0",
        model="m",
        seed=0,
    )


def test_dpo_rows_leave_out_coin_flips_and_render_text_for_base_models():
    records = [_comparison(0, 0.9), _comparison(1, 0.15), _comparison(2, 0.52)]
    rows = dpo_rows(records, chat=False, min_confidence=0.6)
    assert [round(r["p_chosen"], 2) for r in rows] == [0.9, 0.85]
    assert all(r["chosen"].startswith(" Knead") for r in rows)
    assert rows[0]["prompt"].endswith("\n\nAssistant:")


def test_dpo_moves_the_policy_and_lowers_its_loss(tmp_path, tiny_model_path):
    with RunStore(tmp_path / "run") as store:
        writer, _ = store.stage(LABEL_STAGE).writers()
        writer.write([_comparison(i, 0.9 if i % 2 else 0.1) for i in range(4)] + [_comparison(9, 0.5)])
        writer.close()
        config = _config(tmp_path, algo="dpo", max_steps=6, batch_size=4, beta=0.5, learning_rate=2e-2)
        summary = train(store, str(tiny_model_path), config, seed=0)
    assert summary["pairs"] == 4 and summary["pairs_left_out"] == 1
    assert summary["last_loss"] < summary["first_loss"]
    assert _moved(tiny_model_path, tmp_path / "run" / MODEL_DIR)


@pytest.mark.slow
def test_rloo_on_the_real_policy_with_a_preference_model_made_from_it(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from constitutional.models.embedded import resolve

    policy = resolve("smollm2-135m-instruct")
    with RunStore(tmp_path / "run") as store:
        pm = AutoModelForSequenceClassification.from_pretrained(policy, num_labels=1)
        pm.save_pretrained(store.dir / PM_DIR)
        AutoTokenizer.from_pretrained(policy).save_pretrained(store.dir / PM_DIR)
        config = _config(tmp_path, max_steps=2, max_completion_length=16, learning_rate=1e-5)
        summary = train(store, "smollm2-135m-instruct", config, seed=0)
    assert summary["steps"] == 2 and summary["pm_tokenizer"] == "same as the policy's"
    assert _moved(Path(policy), tmp_path / "run" / MODEL_DIR)
