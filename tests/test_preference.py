"""The preference model: the soft-label loss, data import and balancing, training through TRL, scoring, metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from constitutional.errors import InputError
from constitutional.finetuning import TrainingOutputs
from constitutional.preference import (
    PMConfig,
    balance_kinds,
    load_preference_file,
    pairwise_accuracy,
    pm_metrics,
    soft_preference_loss,
    split,
    train,
)
from constitutional.records import ComparisonRecord, PMMetrics
from constitutional.reward import PreferenceModel, load_responses


def test_soft_loss_matches_the_hand_computed_value():
    chosen, rejected, p = torch.tensor([2.0, 0.5]), torch.tensor([1.0, 1.5]), torch.tensor([0.8, 0.3])

    def sigmoid(x):
        return 1 / (1 + math.exp(-x))

    by_hand = (
        -(
            (0.8 * math.log(sigmoid(1.0)) + 0.2 * math.log(sigmoid(-1.0)))
            + (0.3 * math.log(sigmoid(-1.0)) + 0.7 * math.log(sigmoid(1.0)))
        )
        / 2
    )
    assert soft_preference_loss(chosen, rejected, p).item() == pytest.approx(by_hand, rel=1e-6)


def test_soft_loss_is_bradley_terry_at_p_one():
    chosen, rejected = torch.tensor([0.3, -1.2, 2.0]), torch.tensor([0.1, 0.4, -0.5])
    bradley_terry = -torch.nn.functional.logsigmoid(chosen - rejected).mean()
    assert soft_preference_loss(chosen, rejected, torch.ones(3)).item() == pytest.approx(bradley_terry.item())


def _row(i: int, kind: str | None) -> dict:
    return {"id": f"{kind}-{i}", "kind": kind, "prompt": [], "chosen": "x", "rejected": "y", "p_chosen": 0.7}


def test_harmless_share_subsamples_the_larger_side():
    rows = [_row(i, "red_team") for i in range(30)] + [_row(i, "helpful") for i in range(10)]
    balanced = balance_kinds(rows, 0.5, seed=0)
    assert sum(r["kind"] == "red_team" for r in balanced) == 10
    assert sum(r["kind"] == "helpful" for r in balanced) == 10
    quarter = balance_kinds(rows, 0.25, seed=0)
    assert [r["kind"] for r in quarter].count("red_team") == 3  # 0.25 * 10 / 0.75, rounded
    # Too few red-team pairs: the helpful side is cut instead.
    mostly_helpful = balance_kinds(rows, 0.9, seed=0)
    assert [r["kind"] for r in mostly_helpful].count("helpful") == 3
    assert [r["kind"] for r in mostly_helpful].count("red_team") == 30
    assert balance_kinds(rows, None, seed=0) == rows
    unlabelled = [*rows, _row(0, None)]
    assert _row(0, None) in balance_kinds(unlabelled, 0.5, seed=0)


def test_split_is_seeded_and_holds_out_the_fraction():
    rows = [_row(i, "helpful") for i in range(20)]
    train_rows, held = split(rows, 0.25, seed=3)
    assert len(held) == 5 and len(train_rows) == 15
    assert split(rows, 0.25, seed=3)[1] == held
    assert split(rows, 0.25, seed=4)[1] != held


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_imported_rows_accept_text_and_conversational_answers(tmp_path):
    path = _write_jsonl(
        tmp_path / "prefs.jsonl",
        [
            {"prompt": "hi", "chosen": "hello", "rejected": "go away", "p_chosen": 0.9, "kind": "helpful"},
            {
                "prompt": [{"role": "user", "content": "hi"}],
                "chosen": [{"role": "assistant", "content": "hey"}],
                "rejected": [{"role": "assistant", "content": "no"}],
                "p_chosen": 1,
            },
        ],
    )
    rows = load_preference_file(path)
    assert [r["chosen"] for r in rows] == ["hello", "hey"]
    assert rows[0]["prompt"] == [{"role": "user", "content": "hi"}] and rows[1]["kind"] is None


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"prompt": "q", "chosen": "a", "rejected": "b", "p_chosen": 1.3}, "p_chosen"),
        ({"prompt": "q", "chosen": "a", "rejected": "b", "p_chosen": -0.1}, "p_chosen"),
        ({"prompt": "q", "chosen": "a", "rejected": "b"}, "p_chosen"),
        ({"prompt": "q", "chosen": "a", "p_chosen": 0.5}, "rejected"),
        ({"chosen": "a", "rejected": "b", "p_chosen": 0.5}, "prompt"),
    ],
)
def test_imported_rows_with_bad_labels_or_missing_fields_name_the_line(tmp_path, bad, field):
    good = {"prompt": "q", "chosen": "a", "rejected": "b", "p_chosen": 0.6}
    path = _write_jsonl(tmp_path / "prefs.jsonl", [good, good, bad])
    with pytest.raises(InputError) as err:
        load_preference_file(path)
    assert err.value.line == 3 and err.value.field == field and str(path) in str(err.value)


def test_accuracy_and_calibration():
    assert pairwise_accuracy([1.0, -2.0, 0.5, 3.0], [0.9, 0.8, 0.6, 0.5]) == pytest.approx(2 / 3)
    held_out = [_row(0, "helpful") | {"p_chosen": p} for p in (0.5, 0.5, 0.75)]
    # sigmoid(0) = 0.5 and sigmoid(log 3) = 0.75: each prediction equals its soft label.
    perfect = pm_metrics([0.0, 0.0, math.log(3)], held_out, [], bins=10)
    assert perfect.calibration.ece == pytest.approx(0.0, abs=1e-9)
    assert perfect.by_kind["helpful"].pairs == 3 and perfect.held_out_pairs == 3
    off = pm_metrics([0.0, 0.0], [_row(0, "red_team") | {"p_chosen": 1.0}] * 2, [_row(1, "helpful")], bins=10)
    assert off.calibration.ece == pytest.approx(0.5)
    assert [b.model_dump() for b in off.calibration.bins] == [
        {"low": 0.5, "high": 0.6, "count": 2, "predicted": 0.5, "observed": 1.0}
    ]
    assert off.train_pairs == off.train_helpful == 1 and off.by_kind["red_team"].accuracy == 0.0
    assert pm_metrics([], [], [], bins=10).calibration is None


def _comparison(i: int, kind: str) -> ComparisonRecord:
    # A learnable signal: the preferred answer always says "bread", the other never does.
    good, bad = f"Mix flour, water and yeast to bake bread {i}.", f"I can't help with that {i}."
    a_first = i % 2 == 0
    p_a = 0.8 + 0.1 * (i % 3) / 2 if a_first else 0.2 - 0.1 * (i % 3) / 2
    return ComparisonRecord(
        id=f"{kind}-{i}",
        kind=kind,
        prompt=[{"role": "user", "content": f"How do I bake bread? ({i})"}],
        a=good if a_first else bad,
        b=bad if a_first else good,
        principles=["p"],
        p_a=p_a,
        p_a_first=p_a,
        logprobs=[[math.log(p_a), math.log(1 - p_a)]],
        constitution="harmless@1.0",
        model="scripted-feedback",
        seed=0,
    )


def _comparisons(n_red: int, n_helpful: int) -> list[ComparisonRecord]:
    return [_comparison(i, "red_team") for i in range(n_red)] + [_comparison(i, "helpful") for i in range(n_helpful)]


def _outputs(directory: Path) -> TrainingOutputs:
    return TrainingOutputs(model_dir=directory / "model", checkpoint_dir=directory / "pm_train" / "checkpoints")


@pytest.mark.parametrize("lora", [True, False])
def test_training_on_soft_labels_moves_the_weights_lowers_the_loss_and_saves(tmp_path, tiny_model_path, lora):
    before = load_file(tiny_model_path / "model.safetensors")
    config = PMConfig(
        base_model=str(tiny_model_path),
        lora=lora,
        max_steps=8,
        batch_size=8,
        learning_rate=3e-3,
        eval_fraction=0.25,
        harmless_share=0.5,
        max_length=64,
    )
    summary = train(_comparisons(n_red=24, n_helpful=8), config, seed=0, outputs=_outputs(tmp_path))
    output = Path(summary["model_dir"])
    assert output == tmp_path / "model" and summary["resumed_from_step"] is None
    after = load_file(output / "model.safetensors")
    assert "score.weight" in after
    moved = [name for name in after if name in before and not torch.equal(before[name], after[name])]
    assert moved, "no base-model parameter changed"
    assert summary["steps"] == 8
    assert summary["last_loss"] < summary["first_loss"]
    assert summary["eval_pairs"] == 8
    # 24 red-team + 8 helpful, 8 held out; balancing at 0.5 cuts red-team pairs to match the helpful ones.
    assert summary["train_red_team"] == summary["train_helpful"] == summary["train_pairs"] // 2
    metrics = PMMetrics.model_validate_json((output / "metrics.json").read_text())
    assert metrics.held_out_pairs == 8 and metrics.train_pairs == summary["train_pairs"]
    assert metrics.calibration.ece == pytest.approx(summary["eval_ece"]) and 0.0 <= metrics.calibration.ece <= 1.0
    assert sum(b.count for b in metrics.calibration.bins) == 8
    assert "scripted-feedback" in (output / "README.md").read_text()
    # The saved model scores: the kind of answer it was taught to prefer now scores higher.
    conversation = [{"role": "user", "content": "How do I bake bread? (99)"}]
    good, bad = PreferenceModel(output).score(
        [conversation, conversation], ["Mix flour, water and yeast to bake bread.", "I can't."]
    )
    assert good > bad


def test_training_on_an_imported_file(tmp_path, tiny_model_path):
    rows = [
        {"prompt": f"q{i}", "chosen": "bake bread", "rejected": "no", "p_chosen": 0.9, "kind": "helpful"}
        for i in range(6)
    ]
    data = _write_jsonl(tmp_path / "prefs.jsonl", rows)
    config = PMConfig(
        base_model=str(tiny_model_path), preference_data=str(data), max_steps=2, batch_size=4, eval_fraction=0.0
    )
    # The imported file replaces the comparisons passed in.
    summary = train(_comparisons(n_red=5, n_helpful=5), config, seed=0, outputs=_outputs(tmp_path))
    assert summary["train_pairs"] == 6 and summary["eval_pairs"] == 0 and summary["eval_accuracy"] is None
    assert str(data) in (Path(summary["model_dir"]) / "README.md").read_text()
    # `cai pm score` on a file of answers writes each row back with its score.
    from typer.testing import CliRunner

    from constitutional.cli import app

    answers = _write_jsonl(tmp_path / "answers.jsonl", [{"prompt": "q", "response": "bake bread", "id": "x"}])
    scored = tmp_path / "scored.jsonl"
    result = CliRunner().invoke(app, ["pm", "score", summary["model_dir"], "--input", str(answers), "-o", str(scored)])
    assert result.exit_code == 0, result.output
    row = json.loads(scored.read_text())
    assert row["id"] == "x" and row["score"] == pytest.approx(
        PreferenceModel(summary["model_dir"]).score([[{"role": "user", "content": "q"}]], ["bake bread"])[0]
    )
    both = CliRunner().invoke(app, ["pm", "score", summary["model_dir"], "--input", str(answers), "--pairs", "run"])
    assert both.exit_code == 2 and "exactly one" in both.output


def test_training_without_comparisons_says_what_to_run(tmp_path, tiny_model_path):
    with pytest.raises(InputError, match="cai rl label"):
        train([], PMConfig(base_model=str(tiny_model_path)), seed=0, outputs=_outputs(tmp_path))


def test_score_input_file_errors_name_line_and_field(tmp_path):
    path = _write_jsonl(tmp_path / "answers.jsonl", [{"prompt": "q", "response": "a"}, {"prompt": "q"}])
    with pytest.raises(InputError) as err:
        load_responses(path)
    assert err.value.line == 2 and err.value.field == "response"
    _, conversations, responses = load_responses(
        _write_jsonl(tmp_path / "ok.jsonl", [{"messages": [{"role": "user", "content": "q"}], "response": "a"}])
    )
    assert conversations == [[{"role": "user", "content": "q"}]] and responses == ["a"]
