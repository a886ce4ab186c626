"""RL against the preference model: RLOO/GRPO move the policy, DPO lowers its loss, bad settings are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from constitutional.errors import InputError
from constitutional.finetuning import TrainingOutputs
from constitutional.records import ComparisonRecord
from constitutional.rl import RLConfig, check_groups, dpo_rows, train

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


def build_preference_model(path: Path, policy: Path, tokenizer=None, num_labels: int = 1) -> Path:
    """A tiny sequence classifier (num_labels=1: a preference model) saved to `path`."""
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
        num_labels=num_labels,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForSequenceClassification(config)
    # A clearly non-zero score head, so completions get different rewards and RLOO has advantages to follow.
    torch.nn.init.normal_(model.score.weight, std=1.0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _outputs(directory: Path) -> TrainingOutputs:
    return TrainingOutputs(model_dir=directory / "rl_model", checkpoint_dir=directory / "rl_train" / "checkpoints")


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
    pm = build_preference_model(tmp_path / "pm", tiny_model_path)
    summary = train(str(tiny_model_path), _config(tmp_path, algo=algo), 0, _outputs(tmp_path), reward_model_dir=pm)
    output = tmp_path / "rl_model"
    assert summary["algo"] == algo and summary["steps"] == 3 and summary["start"] == str(tiny_model_path)
    assert summary["model_dir"] == str(output) and summary["resumed_from_step"] is None
    assert summary["first_reward"] is not None and summary["last_reward"] is not None
    assert summary["pm_tokenizer"] == "same as the policy's"
    assert _moved(tiny_model_path, output)
    assert not any("lora" in key for key in load_file(output / "model.safetensors"))  # merged, not adapters
    assert (output / "tokenizer.json").exists() and "RL-CAI policy" in (output / "README.md").read_text()
    log = json.loads((output / "training_log.json").read_text())
    assert sum("reward" in entry for entry in log) == 3
    assert not (tmp_path / "rl_train" / "checkpoints").exists()


class Killed(Exception):
    """Stands in for the process being killed mid-training."""


def test_a_killed_rl_run_resumes_and_its_progress_bar_starts_at_the_resumed_step(
    tmp_path, tiny_model_path, monkeypatch
):
    import trl
    from transformers import TrainerCallback

    from constitutional import progress

    pm = build_preference_model(tmp_path / "pm", tiny_model_path)
    config = _config(tmp_path, max_steps=3, checkpoint_steps=2)

    class KillAfterThree(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:  # before step 3's checkpoint: the last one is step 2's
                raise Killed

    class KilledRLOOTrainer(trl.RLOOTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(KillAfterThree())

    with monkeypatch.context() as patch:
        patch.setattr(trl, "RLOOTrainer", KilledRLOOTrainer)
        with pytest.raises(Killed):
            train(str(tiny_model_path), config, 0, _outputs(tmp_path), reward_model_dir=pm)

    # The house progress bar of the rerun must start at the resumed step, out of the configured total.
    started = []
    make_bar = progress.progress_bar

    def recording_bar():
        bar = make_bar()
        add_task = bar.add_task

        def recorded(description, **fields):
            started.append((fields.get("completed"), fields.get("total")))
            return add_task(description, **fields)

        bar.add_task = recorded
        return bar

    monkeypatch.setattr(progress, "progress_bar", recording_bar)
    summary = train(str(tiny_model_path), config, 0, _outputs(tmp_path), reward_model_dir=pm)
    assert summary["resumed_from_step"] == 2 and summary["steps"] == 3
    log = json.loads((tmp_path / "rl_model" / "training_log.json").read_text())
    assert [entry["step"] for entry in log if "reward" in entry] == [1, 2, 3]
    assert started == [(2, 3)]


def test_a_preference_model_with_another_tokenizer_scores_re_tokenized_text(tmp_path, tiny_model_path):
    pm = build_preference_model(tmp_path / "pm", tiny_model_path, _foreign_tokenizer(_template(tiny_model_path)))
    summary = train(str(tiny_model_path), _config(tmp_path, max_steps=1), 0, _outputs(tmp_path), reward_model_dir=pm)
    assert summary["pm_tokenizer"] == "re-tokenized" and summary["first_reward"] is not None


def test_chat_policy_with_a_template_less_preference_model_is_refused(tmp_path, tiny_model_path):
    pm = build_preference_model(tmp_path / "pm", tiny_model_path, _foreign_tokenizer(None))
    with pytest.raises(InputError, match="no chat template") as err:
        train(str(tiny_model_path), _config(tmp_path), 0, _outputs(tmp_path), reward_model_dir=pm)
    assert err.value.field == "chat_template"


def test_a_classifier_with_several_labels_is_not_a_reward(tmp_path, tiny_model_path):
    pm = build_preference_model(tmp_path / "pm", tiny_model_path, num_labels=2)
    with pytest.raises(InputError, match="num_labels=2") as err:
        train(str(tiny_model_path), _config(tmp_path), 0, _outputs(tmp_path), reward_model_dir=pm)
    assert err.value.field == "num_labels"


def test_missing_preference_model_says_which_command_makes_it(tmp_path, tiny_model_path):
    with pytest.raises(InputError, match="cai pm train"):
        train(str(tiny_model_path), _config(tmp_path), 0, _outputs(tmp_path), reward_model_dir=tmp_path / "none")
    with pytest.raises(InputError, match="cai pm train") as err:
        train(str(tiny_model_path), _config(tmp_path), 0, _outputs(tmp_path))
    assert err.value.field == "rl.algo"


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
    comparisons = [_comparison(i, 0.9 if i % 2 else 0.1) for i in range(4)] + [_comparison(9, 0.5)]
    config = _config(tmp_path, algo="dpo", max_steps=6, batch_size=4, beta=0.5, learning_rate=2e-2)
    summary = train(str(tiny_model_path), config, 0, _outputs(tmp_path), comparisons=comparisons)
    assert summary["pairs"] == 4 and summary["pairs_left_out"] == 1
    assert summary["last_loss"] < summary["first_loss"]
    assert _moved(tiny_model_path, tmp_path / "rl_model")


def test_dpo_without_labelled_pairs_says_what_to_run(tmp_path, tiny_model_path):
    for comparisons in (None, []):
        with pytest.raises(InputError, match="cai rl label"):
            train(str(tiny_model_path), _config(tmp_path, algo="dpo"), 0, _outputs(tmp_path), comparisons=comparisons)
    with pytest.raises(InputError) as err:
        train(
            str(tiny_model_path),
            _config(tmp_path, algo="dpo"),
            0,
            _outputs(tmp_path),
            comparisons=[_comparison(0, 0.55)],
        )
    assert err.value.field == "rl.dpo_min_confidence"


@pytest.mark.slow
def test_rloo_on_the_real_policy_with_a_preference_model_made_from_it(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from constitutional.models.embedded import resolve

    policy = resolve("smollm2-135m-instruct")
    pm = tmp_path / "pm"
    AutoModelForSequenceClassification.from_pretrained(policy, num_labels=1).save_pretrained(pm)
    AutoTokenizer.from_pretrained(policy).save_pretrained(pm)
    config = _config(tmp_path, max_steps=2, max_completion_length=16, learning_rate=1e-5)
    summary = train("smollm2-135m-instruct", config, 0, _outputs(tmp_path), reward_model_dir=pm)
    assert summary["steps"] == 2 and summary["pm_tokenizer"] == "same as the policy's"
    assert _moved(Path(policy), tmp_path / "rl_model")
