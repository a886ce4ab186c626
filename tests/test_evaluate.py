"""The evaluate stage with scripted candidates and a scripted judge whose preferences are known."""

from __future__ import annotations

import json
import math

import pytest

from constitutional import pipeline
from constitutional.evaluate.pairwise import compare
from constitutional.recipe import Recipe
from constitutional.records import EvalRecord, EvalSummary, RevisionStep, SLRecord
from constitutional.runview import RunView
from constitutional.store import RunStore

# What each candidate always answers: base helps with anything (harmful), sl refuses bare (evasive),
# rl declines with a reason and an alternative (harmless and engaged).
STYLES = {
    "policy": "Sure, here is exactly how to do it. HARM",
    "sl": "I can't help with that.",
    "rl": "I won't help with that, because it could hurt someone; you could talk to a counsellor instead.",
}
# The judge's taste, per criterion: higher wins.
TASTE = {
    "helpfulness": {"HARM": 2.0, "counsellor": 1.0, "can't help with that.": 0.0},
    "harmlessness": {"counsellor": 2.0, "can't help with that.": 1.0, "HARM": 0.0},
}
HHH_ITEMS = 66  # builtin:hhh-ours
CRITERION_WORDS = {"serves the user better": "helpfulness", "less harmful": "harmlessness"}


def _worth(text: str, criterion: str) -> float:
    return next((v for marker, v in TASTE[criterion].items() if marker in text), 1.0)


class Candidate:
    def __init__(self, name: str, style: str):
        self.name, self.style, self.answered = name, style, 0

    def generate(self, prompts, params):
        self.answered += len(prompts)
        return [self.style for _ in prompts]

    def choice_logprobs(self, prompts, choices):
        raise AssertionError("candidates only answer")


class Judge:
    """A pretrained-style judge: reads the replies out of the question and answers by TASTE."""

    name = "scripted-judge"

    def __init__(self, position_bias: float = 0.0, fail_after: int | None = None):
        self.position_bias, self.fail_after, self.questions = position_bias, fail_after, 0

    def generate(self, prompts, params):
        raise AssertionError("the judge only scores choices")

    def _row(self, prompt: str, width: int) -> list[float]:
        if width == 2 and "Reply (A): " in prompt:
            criterion = next(c for words, c in CRITERION_WORDS.items() if words in prompt)
            a = prompt.split("Reply (A): ")[1].split("\n\nReply (B): ")[0]
            b = prompt.split("\n\nReply (B): ")[1]
            margin = _worth(a, criterion) - _worth(b, criterion) + self.position_bias
            p_a = 1 / (1 + math.exp(-margin))
            return [math.log(p_a), math.log(1 - p_a)]
        if width == 2:  # evasive? Yes / No
            p_yes = 0.95 if "can't help with that." in prompt else 0.05
            return [math.log(p_yes), math.log(1 - p_yes)]
        rating = 4 if ("HARM" in prompt if "How harmful" in prompt else "revision" in prompt) else 0
        return [0.0 if k == rating else -20.0 for k in range(5)]

    def choice_logprobs(self, prompts, choices):
        self.questions += len(prompts)
        if self.fail_after is not None and self.questions > self.fail_after:
            raise KeyboardInterrupt
        return [self._row(p, len(choices)) for p in prompts]


def test_both_orders_are_asked_and_averaged():
    conversation = [{"role": "user", "content": "How do I pick a lock?"}]
    biased = Judge(position_bias=1.0)  # likes whatever is shown as (A)
    [tie] = compare(biased, [conversation], [STYLES["sl"]], [STYLES["sl"]], "harmlessness")
    assert tie.p_a_first > 0.7 and tie.p_a_second < 0.3
    assert tie.p_a == pytest.approx(0.5)  # the position preference cancels
    [win] = compare(Judge(), [conversation], [STYLES["rl"]], [STYLES["policy"]], "harmlessness")
    assert win.p_a_first == pytest.approx(win.p_a_second) and win.p_a > 0.8
    assert len(win.logprobs) == 2


TRAINED = ("sl_generate", "sl_train", "rl_train")


def _run_dir_with_models(run_dir, complete=TRAINED):
    """A run whose SL-CAI records and model folders exist; `complete` are the stages the manifest calls done."""
    with RunStore(run_dir) as store:
        writer, _ = store.folder("sl_generate").writers()
        writer.write(
            SLRecord(
                id=f"s{i}",
                kind="red_team",
                prompt=[{"role": "user", "content": f"bad request {i}"}],
                initial="HARM first answer",
                steps=[RevisionStep(principle="p", critique="c", revision=f"revision {n}") for n in (1, 2)],
                constitution="harmless@1.0",
                model="policy",
                params={},
                seed=0,
            )
            for i in range(3)
        )
        writer.close()
        for stage in complete:
            store.start(stage, {"made_by": "test"})
            store.finish(stage, {}, seconds=0.0)
    for folder in ("sl_model", "rl_model"):
        (run_dir / folder).mkdir()
        (run_dir / folder / "config.json").write_text("{}")
    return run_dir


class Loader:
    def __init__(self, judge: Judge):
        self.judge, self.loaded = judge, []

    def __call__(self, spec):
        self.loaded.append(spec.name)
        if spec.name == "judge":
            return self.judge
        label = spec.name.rsplit("_model", 1)[0].rsplit("/", 1)[-1] if spec.name.endswith("_model") else spec.name
        return Candidate(spec.name, STYLES[label])


def _recipe(run_dir, **evaluate) -> Recipe:
    settings = {"max_prompts": 3, "bootstrap": 50, "chunk_size": 4, "revision_records": 2, "judge_items": None}
    return Recipe.model_validate(
        {
            "run_dir": str(run_dir),
            "models": {"policy": {"name": "policy"}, "judge": {"name": "judge"}},
            "evaluate": settings | evaluate,
        }
    )


def test_stage_end_to_end_writes_a_summary_that_ranks_by_the_judges_taste(tmp_path, monkeypatch):
    run_dir = _run_dir_with_models(tmp_path)
    loader = Loader(Judge())
    monkeypatch.setattr("constitutional.models.load_model", loader)
    [outcome] = pipeline.run(_recipe(run_dir), ["evaluate"])
    summary = EvalSummary.model_validate_json((run_dir / "evaluate" / "summary.json").read_text())
    ranking = {c: [r.model for r in sorted(rows, key=lambda r: -r.elo.value)] for c, rows in summary.elo.items()}
    assert ranking == {"helpfulness": ["base", "rl", "sl"], "harmlessness": ["rl", "sl", "base"]}
    assert all(row.comparisons == 2 * 3 for rows in summary.elo.values() for row in rows)  # 3 prompts x 2 rivals
    harm = {(r.model, r.temperature): r.judge_score.value for r in summary.harmfulness}
    assert set(harm) == {(m, t) for m in ("base", "sl", "rl") for t in (1.0, 0.0)}
    assert harm[("base", 1.0)] == pytest.approx(4.0, abs=1e-6) and harm[("rl", 0.0)] == pytest.approx(0.0, abs=1e-6)
    assert all(r.pm_score is None for r in summary.harmfulness)
    evasive = {r.model: r for r in summary.evasiveness}
    assert evasive["sl"].judge_share.value == 1.0 and evasive["sl"].lexical_share.value == 1.0
    assert evasive["rl"].judge_share.value == 0.0 and all(r.agreement == 1.0 for r in summary.evasiveness)
    assert summary.revision_harmlessness == "judge"
    assert [p.revision for p in summary.revision_curve] == [0, 1, 2]
    assert summary.revision_curve[0].harmlessness.value == pytest.approx(0.0, abs=1e-6)
    assert summary.revision_curve[2].harmlessness.value == pytest.approx(4.0, abs=1e-6)
    assert outcome.summary["answers"] == 3 * (3 + 3 + 3)  # per model: red-team at T=1 and T=0, helpful at T=1
    assert summary.judge_quality is None and outcome.summary["judge_accuracy"] is None  # judge_items: null
    assert set(outcome.summary["harmlessness_elo"]) == {"base", "sl", "rl"}


def test_a_killed_stage_resumes_without_redoing_or_duplicating_anything(tmp_path, monkeypatch):
    run_dir = _run_dir_with_models(tmp_path)
    monkeypatch.setattr("constitutional.models.load_model", Loader(Judge(fail_after=20)))
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(_recipe(run_dir), ["evaluate"])
    before = {r.id for r in RunView(run_dir).records("evaluate", EvalRecord)}
    assert before and not (run_dir / "evaluate" / "summary.json").exists()

    loader = Loader(Judge())
    monkeypatch.setattr("constitutional.models.load_model", loader)
    [outcome] = pipeline.run(_recipe(run_dir), ["evaluate"])
    assert outcome.action == "resumed"
    assert loader.loaded == ["judge"]  # every answer was on disk: no candidate was loaded again
    lines = [json.loads(line) for path in (run_dir / "evaluate").glob("part-*.jsonl") for line in path.open()]
    ids = [line["id"] for line in lines]
    assert len(ids) == len(set(ids)) and before <= set(ids)
    fresh = tmp_path.parent / (tmp_path.name + "-fresh")
    fresh.mkdir()
    monkeypatch.setattr("constitutional.models.load_model", Loader(Judge()))
    pipeline.run(_recipe(_run_dir_with_models(fresh)), ["evaluate"])
    assert {r.id for r in RunView(fresh).records("evaluate", EvalRecord)} == set(ids)


def test_candidates_are_the_policy_the_complete_trained_models_and_the_recipes(tmp_path, monkeypatch):
    # sl_model is on disk but sl_train is not complete: a leftover folder is not a candidate.
    run_dir = _run_dir_with_models(tmp_path, complete=("sl_generate", "rl_train"))
    loader = Loader(Judge())
    monkeypatch.setattr("constitutional.models.load_model", loader)
    pipeline.run(_recipe(run_dir, candidates={"extra": {"name": "sl"}}), ["evaluate"])
    summary = EvalSummary.model_validate_json((run_dir / "evaluate" / "summary.json").read_text())
    assert {row.model for rows in summary.elo.values() for row in rows} == {"base", "rl", "extra"}
    assert sorted(set(loader.loaded)) == sorted(["policy", str(run_dir / "rl_model"), "sl", "judge"])


class KnowsItems(Judge):
    """Answers the multiple-choice items with known answers: right on the items `knows` picks, wrong on the rest."""

    def __init__(self, knows):
        super().__init__()
        self.knows = knows

    def choice_logprobs(self, prompts, choices):
        if list(choices) != [" right", " wrong"]:
            return super().choice_logprobs(prompts, choices)
        sure, unsure = math.log(0.9), math.log(0.1)
        return [[sure, unsure] if self.knows(p) else [unsure, sure] for p in prompts]


@pytest.mark.parametrize(
    ("knows", "accuracy", "at_chance"),
    [(lambda prompt: True, 1.0, False), (lambda prompt: int(prompt.split()[1]) % 2 == 0, 0.5, True)],
    ids=["knows-all", "knows-half"],
)
def test_the_judges_own_accuracy_is_measured_on_items_with_known_answers(
    tmp_path, monkeypatch, knows, accuracy, at_chance
):
    items = tmp_path / "items.jsonl"
    items.write_text(
        "".join(
            json.dumps({"prompt": f"Question {i} of the test", "corrects": [" right"], "incorrects": [" wrong"]})
            + "\n"
            for i in range(12)
        )
    )
    run_dir = _run_dir_with_models(tmp_path / "run", complete=())
    monkeypatch.setattr("constitutional.models.load_model", Loader(KnowsItems(knows)))
    [outcome] = pipeline.run(_recipe(run_dir, judge_items=str(items)), ["evaluate"])
    quality = EvalSummary.model_validate_json((run_dir / "evaluate" / "summary.json").read_text()).judge_quality
    assert quality.judge == "judge" and quality.items == str(items) and quality.count == 12
    assert quality.accuracy == accuracy and quality.at_chance is at_chance
    assert quality.accuracy_low <= accuracy <= quality.accuracy_high
    assert outcome.summary["judge_accuracy"] == accuracy


@pytest.mark.parametrize("judge_fixture", ["tiny_base_model_path", "tiny_model_path"])
def test_stage_with_real_tiny_models_a_preference_model_and_both_judge_kinds(tmp_path, request, judge_fixture):
    """The real transformers path: tiny candidates, a pretrained or chat judge, and a preference model on disk."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    tiny, judge = request.getfixturevalue("tiny_model_path"), request.getfixturevalue(judge_fixture)
    run_dir = _run_dir_with_models(tmp_path, complete=(*TRAINED, "pm_train"))
    for folder in ("sl_model", "rl_model"):  # the scripted placeholders become real (tiny) saved models
        for item in tiny.iterdir():
            (run_dir / folder / item.name).write_bytes(item.read_bytes())
    torch.manual_seed(0)
    pm = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(tiny, num_labels=1))
    pm.save_pretrained(run_dir / "preference_model")
    AutoTokenizer.from_pretrained(tiny).save_pretrained(run_dir / "preference_model")
    recipe = Recipe.model_validate(
        {
            "run_dir": str(run_dir),
            "models": {"policy": {"name": str(tiny), "dtype": "float32"}, "judge": {"name": str(judge)}},
            "evaluate": {
                "max_prompts": 2,
                "bootstrap": 20,
                "revision_records": 1,
                "sampling": {"max_new_tokens": 4},
                "judge_items": None,
            },
        }
    )
    [outcome] = pipeline.run(recipe, ["evaluate"])
    summary = EvalSummary.model_validate_json((run_dir / "evaluate" / "summary.json").read_text())
    assert summary.revision_harmlessness == "preference_model"
    assert [p.revision for p in summary.revision_curve] == [0, 1, 2]
    assert all(row.pm_score is not None for row in summary.harmfulness)
    assert {row.model for rows in summary.elo.values() for row in rows} == {"base", "sl", "rl"}
    assert all(0.0 <= row.judge_score.value <= 4.0 for row in summary.harmfulness)
    assert outcome.summary["comparisons"] == 2 * 2 * 3  # 2 criteria x 2 prompts x 3 pairs


@pytest.mark.slow
def test_stage_with_the_embedded_models(tmp_path):
    """The demo's models for real: the instruct policy against the pretrained model, judged by the latter."""
    recipe = Recipe.model_validate(
        {
            "run_dir": str(tmp_path),
            "models": {"policy": {"name": "smollm2-135m-instruct"}, "judge": {"name": "gemma3-270m"}},
            "evaluate": {
                "max_prompts": 2,
                "candidates": {"pretrained": {"name": "gemma3-270m"}},
                "sampling": {"max_new_tokens": 24},
                "bootstrap": 50,
            },
        }
    )
    [outcome] = pipeline.run(recipe, ["evaluate"])
    summary = EvalSummary.model_validate_json((tmp_path / "evaluate" / "summary.json").read_text())
    assert {row.model for row in summary.elo["harmlessness"]} == {"base", "pretrained"}
    assert all(row.comparisons == 2 for rows in summary.elo.values() for row in rows)
    assert len(summary.harmfulness) == 4 and all(0 <= r.judge_score.value <= 4 for r in summary.harmfulness)
    assert summary.revision_curve == []  # no SL-CAI records in this run
    answers = [r.entry for r in RunView(tmp_path).records("evaluate", EvalRecord) if r.entry.type == "answer"]
    assert len(answers) == outcome.summary["answers"] == 2 * (2 + 2 + 2)
    assert all(a.text.strip() for a in answers if a.model == "base")
    # The judge's own accuracy on the built-in items is measured by default and shown with the judged figures.
    quality = summary.judge_quality
    assert quality.judge == "gemma3-270m" and quality.items == "builtin:hhh-ours" and quality.count == HHH_ITEMS
    assert quality.accuracy_low <= quality.accuracy <= quality.accuracy_high
    assert outcome.summary["judge_accuracy"] == quality.accuracy
