"""Response pairs: two answers per prompt in one batched call, refusals kept with reasons, resume, the policy."""

from __future__ import annotations

import json
import math

import pytest
from doubles import DiesOnCall

from constitutional.errors import InputError
from constitutional.models.base import SamplingParams
from constitutional.models.spec import ModelSpec
from constitutional.pairs import PairsConfig, sample, sample_pairs
from constitutional.records import PairRecord, PromptRecord
from constitutional.runview import RunView
from constitutional.store import RunStore, StageFolder


class ScriptedModel:
    """Numbers every answer it gives, so the two copies of a prompt get different answers unless told otherwise."""

    name = "scripted"

    def __init__(self, answer=None):
        self.calls: list[list] = []
        self.answer = answer or (lambda prompt, number: f"answer {number} to {prompt[-1]['content']}")

    def generate(self, prompts, params: SamplingParams) -> list[str]:
        self.calls.append(list(prompts))
        start = sum(len(call) for call in self.calls[:-1])
        return [self.answer(p, start + i) for i, p in enumerate(prompts)]

    def choice_logprobs(self, prompts, choices):
        raise AssertionError("sampling never scores choices")


def _prompts(n: int, prefix: str = "p") -> list[PromptRecord]:
    return [
        PromptRecord(id=f"{prefix}{i}", messages=[{"role": "user", "content": f"question {i}"}], source="t")
        for i in range(n)
    ]


def test_one_batched_call_holds_every_prompt_twice_and_gives_two_different_answers():
    model = ScriptedModel()
    pairs, rejected = sample_pairs(model, _prompts(3), "red_team", "harmless@1.0", SamplingParams(), seed=0)
    assert len(model.calls) == 1 and len(model.calls[0]) == 6
    assert model.calls[0][:3] == model.calls[0][3:]
    assert not rejected and [p.id for p in pairs] == ["p0", "p1", "p2"]
    assert all(p.a != p.b and p.a.endswith(f"question {i}") for i, p in enumerate(pairs))
    assert pairs[0].model == "scripted" and pairs[0].constitution == "harmless@1.0" and pairs[0].kind == "red_team"


def test_empty_or_identical_answers_are_rejected_with_a_reason():
    def answer(prompt, number):
        content = prompt[-1]["content"]
        if content == "question 0" and number >= 3:
            return "   "  # the second answer to the first prompt
        if content == "question 1":
            return "same words"
        return f"answer {number}"

    pairs, rejected = sample_pairs(
        ScriptedModel(answer), _prompts(3), "helpful", "harmless@1.0", SamplingParams(), seed=0
    )
    assert [p.id for p in pairs] == ["p2"]
    reasons = {r.id: r.reason for r in rejected}
    assert "empty answer (b)" in reasons["p0"]
    assert "identical" in reasons["p1"]


def test_the_real_backend_gives_the_two_copies_different_answers(tiny_model_path):
    from constitutional.models import load_model

    model = load_model(ModelSpec(name=str(tiny_model_path), dtype="float32", batch_size=4))
    params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=12, stop=[], seed=5)
    pairs, rejected = sample_pairs(model, _prompts(3), "red_team", "c@1", params, seed=5)
    assert not [r for r in rejected if "identical" in r.reason]
    assert all(p.a != p.b for p in pairs)


def _write_prompts(path, n: int) -> str:
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"question {i}"}) + "\n" for i in range(n)))
    return str(path)


def test_stage_writes_both_kinds_and_keeps_refused_prompts(tmp_path):
    red = tmp_path / "red.jsonl"
    red.write_text('{"id": "r1", "prompt": "bad thing"}\n{"id": "r2", "prompt": "  "}\n')
    config = PairsConfig(red_team_prompts=str(red), helpful_prompts=_write_prompts(tmp_path / "h.jsonl", 2))
    stage = StageFolder(tmp_path / "run" / "rl_sample")
    summary = sample(stage, ScriptedModel(), "harmless@1.0", config, seed=0)
    records = stage.records(PairRecord)
    assert [(r.id, "empty prompt" in r.reason) for r in stage.rejected()] == [("r2", True)]
    assert sorted((r.kind, r.id) for r in records) == [("helpful", "q0"), ("helpful", "q1"), ("red_team", "r1")]
    assert summary == {"pairs": 3, "rejected": 1, "policy": "scripted"}
    assert records[0].params["temperature"] == 1.0


def test_prompts_that_leave_no_room_for_an_answer_in_the_context_window_are_rejected(tmp_path, tiny_model_path):
    from test_hf_backend import build_short_context_model

    policy = build_short_context_model(tiny_model_path, tmp_path / "model", positions=64)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        json.dumps({"id": "short", "prompt": "bake bread"})
        + "\n"
        + json.dumps({"id": "long", "prompt": "bread " * 30})
        + "\n"
    )
    sampling = SamplingParams(temperature=1.0, max_new_tokens=16, stop=[], seed=0)
    counts = policy.prompt_tokens(
        [[{"role": "user", "content": "bake bread"}], [{"role": "user", "content": "bread " * 30}]]
    )
    assert counts[0] + 16 <= 64 < counts[1] + 16  # the premise: one fits with its answer, the other does not
    config = PairsConfig(red_team_prompts=str(prompts), helpful_prompts=None, sampling=sampling)
    stage = StageFolder(tmp_path / "run" / "rl_sample")
    summary = sample(stage, policy, "c@1", config, seed=0)
    [refused] = stage.rejected()
    assert [r.id for r in stage.records(PairRecord)] == ["short"] and refused.id == "long"
    assert f"prompt of {counts[1]} tokens + 16 tokens the stage needs exceeds the context window" in refused.reason
    assert summary["rejected"] == 1
    # A rerun skips it as done, without asking again.
    sample(stage, policy, "c@1", config, seed=0)
    assert len(stage.rejected()) == 1
    # A file none of whose prompts fits is an error before anything is written, not a stage of 0 pairs.
    prompts.write_text(json.dumps({"id": "long", "prompt": "bread " * 30}) + "\n")
    empty = StageFolder(tmp_path / "run2" / "rl_sample")
    with pytest.raises(InputError, match=r"p\.jsonl: none of its 1 prompt\(s\) fits the model: prompt of \d+ tokens"):
        sample(empty, policy, "c@1", config, seed=0)
    assert empty.rejected() == [] and empty.records(PairRecord) == []


def test_rerun_after_interruption_samples_only_the_missing_prompts(tmp_path):
    config = PairsConfig(red_team_prompts=_write_prompts(tmp_path / "p.jsonl", 5), helpful_prompts=None, chunk_size=2)
    stage = StageFolder(tmp_path / "run" / "rl_sample")
    with pytest.raises(KeyboardInterrupt):
        sample(stage, DiesOnCall(ScriptedModel(), fail_on_call=2), "c@1", config, seed=0)  # dies on the second chunk
    assert sorted(r.id for r in stage.records(PairRecord)) == ["q0", "q1"]
    resumed = ScriptedModel()
    sample(stage, resumed, "c@1", config, seed=0)
    records = stage.records(PairRecord)
    asked = [p[-1]["content"] for call in resumed.calls for p in call]
    assert sorted(set(asked)) == ["question 2", "question 3", "question 4"] and len(asked) == 6
    assert sorted(r.id for r in records) == ["q0", "q1", "q2", "q3", "q4"]


class Loader:
    """Stands in for `models.load_model`: records which model the stage asked for."""

    def __init__(self):
        self.loaded = []

    def __call__(self, spec):
        self.loaded.append(spec)
        model = ScriptedModel()
        model.name = spec.name
        return model


def _complete(run_dir, stage: str) -> None:
    with RunStore(run_dir) as store:
        store.start(stage, {"made_by": "test"})
        store.finish(stage, {}, seconds=0.0)


def _sample_recipe(tmp_path, choice: str):
    from constitutional.recipe import Recipe

    return Recipe.model_validate(
        {
            "run_dir": str(tmp_path / "run"),
            "models": {"policy": {"name": "configured", "batch_size": 7}},
            "sample": {
                "policy": choice,
                "red_team_prompts": _write_prompts(tmp_path / "p.jsonl", 2),
                "helpful_prompts": None,
            },
        }
    )


def test_the_stage_answers_with_the_sl_model_once_sl_train_is_complete(tmp_path, monkeypatch):
    from constitutional import pipeline

    loader = Loader()
    monkeypatch.setattr("constitutional.models.load_model", loader)
    recipe = _sample_recipe(tmp_path, "sl_model")
    # A folder on disk is not an SL-CAI model until its stage says it is complete.
    RunStore(tmp_path / "run").close()
    (tmp_path / "run" / "sl_model").mkdir()
    (tmp_path / "run" / "sl_model" / "config.json").write_text("{}")
    [first] = pipeline.run(recipe, ["rl_sample"])
    assert [s.name for s in loader.loaded] == ["configured"] and first.summary["policy"] == "configured"

    _complete(tmp_path / "run", "sl_train")
    [second] = pipeline.run(recipe, ["rl_sample"])
    # Pairs from the base policy are stale once the SL-CAI model exists: the stage is redone with it.
    assert second.action == "redone"
    chosen = loader.loaded[-1]
    assert chosen.name == str(tmp_path / "run" / "sl_model") and chosen.batch_size == 7
    pairs = RunView(tmp_path / "run").records("rl_sample", PairRecord)
    assert len(pairs) == 2 and {p.model for p in pairs} == {chosen.name}


def test_policy_choice_keeps_the_configured_policy_even_when_the_sl_model_is_trained(tmp_path, monkeypatch):
    from constitutional import pipeline

    loader = Loader()
    monkeypatch.setattr("constitutional.models.load_model", loader)
    (tmp_path / "run").mkdir()
    _complete(tmp_path / "run", "sl_train")
    [outcome] = pipeline.run(_sample_recipe(tmp_path, "policy"), ["rl_sample"])
    assert [s.name for s in loader.loaded] == ["configured"] and outcome.summary["policy"] == "configured"


@pytest.mark.slow
def test_rl_sample_then_pm_train_through_the_cli_with_the_real_model(tmp_path):
    """4 prompts, 2 answers each from SmolLM2-135M-Instruct, then 2 PM steps on hand-made labels."""
    from typer.testing import CliRunner

    from constitutional.cli import app
    from constitutional.records import ComparisonRecord

    run_dir = tmp_path / "run"
    runner = CliRunner()
    common = ["--run-dir", str(run_dir), "--models.policy.batch-size", "8"]
    result = runner.invoke(app, ["rl", "sample", *common, "--max-prompts", "2", "--sampling.max-new-tokens", "24"])
    assert result.exit_code == 0, result.output
    view = RunView(run_dir)
    pairs = view.records("rl_sample", PairRecord)
    assert len(pairs) + len(view.rejected("rl_sample")) == 4
    assert pairs and all(p.a != p.b for p in pairs) and pairs[0].model == "smollm2-135m-instruct"
    # Labels made by hand, standing in for the feedback stage.
    comparisons = [
        ComparisonRecord(
            id=p.id,
            kind=p.kind,
            prompt=p.prompt,
            a=p.a,
            b=p.b,
            principles=["p"],
            p_a=0.7,
            p_a_first=0.7,
            logprobs=[[math.log(0.7), math.log(0.3)]],
            constitution=p.constitution,
            model="hand",
            seed=0,
        )
        for p in pairs
    ]
    with RunStore(run_dir) as store:
        store.start("rl_label", {"hand": True})
        writer, _ = store.folder("rl_label").writers()
        writer.write(comparisons)
        writer.close()
        store.finish("rl_label", {"comparisons": len(comparisons)}, seconds=0.0)
    result = runner.invoke(
        app,
        ["pm", "train", "--run-dir", str(run_dir), "--max-steps", "2", "--batch-size", "2", "--eval-fraction", "0"],
    )
    assert result.exit_code == 0, result.output
    assert (run_dir / "preference_model" / "model.safetensors").exists()
    scored = tmp_path / "scored.jsonl"
    result = runner.invoke(
        app, ["pm", "score", str(run_dir / "preference_model"), "--pairs", str(run_dir), "-o", str(scored)]
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in scored.read_text().splitlines()]
    assert [row["id"] for row in rows] == [p.id for p in pairs]
    assert all(math.isfinite(row["score_a"]) and math.isfinite(row["score_b"]) for row in rows)
    assert any(row["score_a"] != row["score_b"] for row in rows)  # two different answers, two different scores
