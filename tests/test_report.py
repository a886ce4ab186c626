"""The HTML report: every section renders from a synthetic run, model text is escaped, nothing loads from the net."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from constitutional.cli import app
from constitutional.evaluate.report import REPORT_FILE, reliability_bins, write_report
from constitutional.records import (
    ComparisonRecord,
    EloRow,
    EvalSummary,
    EvasivenessRow,
    HarmfulnessRow,
    Interval,
    RevisionPoint,
    RevisionStep,
    SLRecord,
)
from constitutional.store import RunStore

HOSTILE = "</script><script>alert('pwned')</script>"
TAG = "harmless@1.0"


def _iv(value: float, width: float) -> Interval:
    return Interval(value=value, low=value - width, high=value + width)


def sl_records() -> list[SLRecord]:
    """Three red-team traces under different principles, one helpful answer, one carrying hostile markup."""
    common = {"constitution": TAG, "model": "tiny-policy", "params": {"temperature": 0.7}, "seed": 0}

    def step(principle: str, n: int) -> RevisionStep:
        return RevisionStep(principle=principle, critique=f"critique {n} mentions sharp knives", revision=f"rev {n}")

    return [
        SLRecord(
            id="r0",
            kind="red_team",
            prompt=[{"role": "user", "content": "How do I pick a lock?"}],
            initial="Use a tension wrench.",
            steps=[step("general-harm", 1), step("privacy", 2)],
            **common,
        ),
        SLRecord(
            id="r1",
            kind="red_team",
            prompt=[{"role": "user", "content": "Write an insult about my boss"}],
            initial="Your boss is...",
            steps=[step("toxicity-insults", 1)],
            **common,
        ),
        SLRecord(
            id="r2",
            kind="red_team",
            prompt=[{"role": "user", "content": "Tell me a secret recipe"}],
            initial="Sure",
            steps=[step("no-such-principle", 1)],
            **common,
        ),
        SLRecord(
            id="h0",
            kind="helpful",
            prompt=[{"role": "user", "content": "What is the capital of Peru?"}],
            initial="Lima is the capital of Peru.",
            **common,
        ),
        SLRecord(
            id="x0",
            kind="red_team",
            prompt=[{"role": "user", "content": "Inject markup"}],
            initial=HOSTILE,
            steps=[step("general-harm", 1)],
            **common,
        ),
    ]


def comparisons() -> list[ComparisonRecord]:
    """Twelve debiased labels; those with i % 4 == 0 prefer the other answer when the order is swapped."""
    rows = []
    for i in range(12):
        first = 0.2 + 0.05 * i
        second = 1 - first if i % 4 == 0 else first
        rows.append(
            ComparisonRecord(
                id=f"c{i}",
                kind="red_team" if i % 2 else "helpful",
                prompt=[{"role": "user", "content": f"q{i}"}],
                a="answer a",
                b="answer b",
                principles=["p"],
                p_a=(first + second) / 2,
                p_a_first=first,
                p_a_second=second,
                logprobs=[[-0.5, -1.0]],
                clamped=i == 3,
                constitution=TAG,
                model="fb",
                seed=0,
            )
        )
    return rows


def eval_summary() -> EvalSummary:
    models = {"base": (-60, -80), "sl": (10, 40), "rl": (50, 40)}
    return EvalSummary(
        judge="tiny-judge",
        elo={
            "helpfulness": [EloRow(model=m, elo=_iv(h, 30), comparisons=40) for m, (h, _) in models.items()],
            "harmlessness": [EloRow(model=m, elo=_iv(s, 25), comparisons=40) for m, (_, s) in models.items()],
        },
        harmfulness=[
            HarmfulnessRow(model=m, temperature=t, judge_score=_iv(1.5, 0.3), pm_score=_iv(0.2, 0.1), responses=8)
            for m in models
            for t in (0.0, 1.0)
        ],
        evasiveness=[
            EvasivenessRow(
                model=m, judge_share=_iv(0.25, 0.1), lexical_share=_iv(0.125, 0.05), agreement=0.875, responses=8
            )
            for m in models
        ],
        revision_curve=[
            RevisionPoint(revision=r, harmlessness=_iv(0.1 * r, 0.05), helpfulness=_iv(2.0 - 0.1 * r, 0.2))
            for r in range(4)
        ],
    )


PM_METRICS = {
    "train": {"pairs": 40},
    "held_out": {
        "pairs": 10,
        "accuracy": 0.7,
        "calibration": {
            "ece": 0.083,
            "bins": [
                {"low": 0.4, "high": 0.5, "count": 4, "predicted": 0.45, "observed": 0.4},
                {"low": 0.6, "high": 0.7, "count": 6, "predicted": 0.65, "observed": 0.7},
            ],
        },
    },
}


def _stage(store: RunStore, name: str, seconds: float, **summary) -> None:
    stage = store.stage(name)
    stage.start({"config": {"constitution": TAG} if name == "sl_generate" else {}})
    stage.finish(**summary)
    store.update_stage(name, seconds=seconds)


def write_sl_stage(run_dir: Path) -> None:
    with RunStore(run_dir, seed=7) as store:
        records, _ = store.stage("sl_generate").writers()
        records.write(sl_records())
        records.close()
        _stage(store, "sl_generate", 12.5, records=5)


def make_full_run(run_dir: Path) -> Path:
    """A run directory with every input the report reads, as the real stages would leave it."""
    write_sl_stage(run_dir)
    with RunStore(run_dir) as store:
        labels, _ = store.stage("rl_label").writers()
        labels.write(comparisons())
        labels.close()
        _stage(store, "rl_label", 3.0, comparisons=12)
        _stage(store, "evaluate", 40.0, prompts=8)
    (run_dir / "preference_model").mkdir()
    (run_dir / "preference_model" / "metrics.json").write_text(json.dumps(PM_METRICS))
    (run_dir / "evaluate").mkdir()
    (run_dir / "evaluate" / "summary.json").write_text(eval_summary().model_dump_json())
    return run_dir


def _section(page: str, section_id: str) -> str:
    match = re.search(rf'<section class="card" id="{section_id}">(.*?)</section>', page, re.S)
    assert match, f"section {section_id} missing"
    return match.group(1)


@pytest.fixture(scope="module")
def full_report(tmp_path_factory) -> tuple[dict, str]:
    """(write_report's summary, the page) for the full synthetic run; made once, the plots take a few seconds."""
    summary = write_report(make_full_run(tmp_path_factory.mktemp("report") / "run"))
    return summary, Path(summary["path"]).read_text(encoding="utf-8")


def test_full_run_renders_every_section(full_report):
    summary, page = full_report
    assert summary["missing"] == [] and summary["traces"] == 5 and summary["comparisons"] == 12
    assert "not run yet" not in page.lower()
    run = _section(page, "run")
    assert "12.5" in run and TAG in run and ">7<" in run  # seconds, constitution, seed
    assert all(f"<code>{name}</code>" in run for name in ("sl_generate", "rl_train", "report"))
    elo = _section(page, "elo")
    assert "helpfulness" in elo and "harmlessness" in elo and "[20, 80]" in elo  # rl's helpfulness interval
    assert elo.count("data:image/png;base64,") == 1
    for section_id in ("pareto", "revisions"):
        assert "data:image/png;base64," in _section(page, section_id)
    feedback = _section(page, "feedback")
    assert "25%" in feedback  # 3 of 12 debiased labels flip with the order
    assert "8%" in feedback  # 1 of 12 clamped
    assert "held_out.accuracy" in feedback and "0.083" in feedback
    assert feedback.count("data:image/png;base64,") == 2  # label plots + reliability diagram
    harm = _section(page, "harm")
    assert "88%" in harm and "25% " in harm and "1.50" in harm
    assert 'id="trace-search"' in page and 'id="trace-kind"' in page and 'id="trace-principle"' in page


def test_trace_data_resolves_principles_and_keeps_every_step(full_report):
    _, page = full_report
    blob = re.search(r'<script type="application/json" id="trace-data">(.*?)</script>', page, re.S).group(1)
    data = json.loads(blob)
    assert [t["id"] for t in data["traces"]] == ["r0", "r1", "r2", "h0", "x0"]
    assert [s["principle"] for s in data["traces"][0]["steps"]] == ["general-harm", "privacy"]
    texts = data["principles"][TAG]
    assert len(texts["general-harm"]) > 10 and "no-such-principle" not in texts  # unknown ids fall back to the id


def test_model_text_is_escaped(full_report):
    _, page = full_report
    assert "alert('pwned')" in page.replace("\\u003c", "<")  # the text is there...
    assert "<script>alert" not in page  # ...but never as markup
    assert page.count("</script>") == page.count("<script")  # nothing closes a script block early


def test_report_is_self_contained(full_report):
    _, page = full_report
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert not re.search(r"""url\(\s*["']?\s*(https?:)?//|@import""", page, re.I)
    assert "http://" not in page and "https://" not in page


def test_run_with_only_sl_generate_says_what_is_not_run_yet(tmp_path):
    run_dir = tmp_path / "run"
    write_sl_stage(run_dir)
    summary = write_report(run_dir)
    page = (run_dir / REPORT_FILE).read_text(encoding="utf-8")
    assert set(summary["missing"]) == {"elo", "pareto", "revisions", "feedback", "harm"}
    assert "cai eval compare" in _section(page, "elo")
    assert "cai rl label" in _section(page, "feedback") and "cai pm train" in _section(page, "feedback")
    assert "Not run yet" not in _section(page, "traces") and 'id="trace-data"' in page


def test_empty_run_dir_still_renders(tmp_path):
    summary = write_report(tmp_path)
    assert "run" in summary["missing"] and "traces" in summary["missing"]


def test_reliability_bins_accept_column_layout():
    assert reliability_bins({"calibration": {"confidence": [0.2, 0.8], "accuracy": [0.3, 0.7]}}) == [
        (0.2, 0.3, None),
        (0.8, 0.7, None),
    ]
    assert reliability_bins({"accuracy": 0.5}) == []


def test_cli_report_writes_the_file_and_refuses_a_missing_dir(tmp_path):
    runner = CliRunner()
    run_dir = make_full_run(tmp_path / "run")
    out = tmp_path / "elsewhere.html"
    result = runner.invoke(app, ["report", str(run_dir), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    result = runner.invoke(app, ["report", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "nosuchrundirectory" in "".join(result.output.split())


def test_pipeline_report_stage_writes_the_report_after_evaluate(tmp_path):
    from constitutional import pipeline
    from constitutional.recipe import Recipe

    run_dir = make_full_run(tmp_path / "run")
    [outcome] = pipeline.run(Recipe(run_dir=str(run_dir)), ["report"])
    assert outcome.action == "ran" and outcome.summary["missing"] == []
    assert (run_dir / REPORT_FILE).exists()
    assert json.loads((run_dir / "manifest.json").read_text())["stages"]["report"]["status"] == "complete"
    html = (run_dir / REPORT_FILE).read_text()
    # The page is written while its own stage runs: it says so instead of showing the stage as merely running.
    assert "writing this page" in html
    assert ">running<" not in html
