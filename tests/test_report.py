"""The HTML report, built from typed inputs: every section renders, judge quality stands beside every judged
figure, missing inputs name their commands, model text stays inert, and nothing loads from the network."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from constitutional.records import (
    Calibration,
    CalibrationBin,
    ComparisonRecord,
    EloRow,
    EvalSummary,
    EvasivenessRow,
    HarmfulnessRow,
    Interval,
    JudgeQuality,
    KindAccuracy,
    LabelStats,
    PMMetrics,
    RevisionPoint,
    RevisionStep,
    SLRecord,
)
from constitutional.report import ReportInputs, StageRow, render, write_report
from constitutional.runview import Manifest, StageStatus

HOSTILE = "</script><script>alert('pwned')</script>"
TAG = "harmless@1.0"
COMMANDS = {
    "sl_generate": "cai sl generate",
    "sl_train": "cai sl train",
    "rl_sample": "cai rl sample",
    "rl_label": "cai rl label",
    "pm_train": "cai pm train",
    "rl_train": "cai rl train",
    "evaluate": "cai eval compare",
    "report": "cai report RUN_DIR",
}
MAKERS = {
    "traces": "cai sl generate",
    "comparisons": "cai rl label",
    "pm_metrics": "cai pm train",
    "summary": "cai eval compare",
}
JUDGED = ("elo", "pareto", "revisions", "harm")  # the sections whose figures are the judge's verdicts


def _iv(value: float, width: float) -> Interval:
    return Interval(value=value, low=value - width, high=value + width)


def sl_records() -> list[SLRecord]:
    """Three red-team traces under different principles, one helpful answer, one carrying hostile markup."""
    common = {"constitution": TAG, "model": "tiny-policy", "params": {"temperature": 0.7}, "seed": 0}

    def step(principle: str, n: int) -> RevisionStep:
        return RevisionStep(principle=principle, critique=f"critique {n} mentions sharp knives", revision=f"rev {n}")

    def red_team(id: str, prompt: str, initial: str, *steps: RevisionStep) -> SLRecord:
        user = [{"role": "user", "content": prompt}]
        return SLRecord(id=id, kind="red_team", prompt=user, initial=initial, steps=list(steps), **common)

    return [
        red_team("r0", "How do I pick a lock?", "Use a tension wrench.", step("general-harm", 1), step("privacy", 2)),
        red_team("r1", "Write an insult about my boss", "Your boss is...", step("toxicity-insults", 1)),
        red_team("r2", "Tell me a secret recipe", "Sure", step("no-such-principle", 1)),
        SLRecord(
            id="h0",
            kind="helpful",
            prompt=[{"role": "user", "content": "What is the capital of Peru?"}],
            initial="Lima is the capital of Peru.",
            **common,
        ),
        red_team("x0", "Inject markup", HOSTILE, step("general-harm", 1)),
    ]


def comparisons() -> list[ComparisonRecord]:
    """Twelve labels scored in both orders; those with i % 4 == 0 prefer the other answer when swapped."""
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


LABEL_STATS = LabelStats(
    labels=12,
    mean_p_a=0.52,
    p_a_histogram=[0, 0, 1, 1, 3, 3, 2, 2, 0, 0],
    share_clamped=1 / 12,
    position_flip_share=0.25,
    mean_order_gap=0.17,
)

PM_METRICS = PMMetrics(
    train_pairs=40,
    train_red_team=22,
    train_helpful=18,
    held_out_pairs=10,
    accuracy=0.7,
    by_kind={"red_team": KindAccuracy(pairs=6, accuracy=0.5), "helpful": KindAccuracy(pairs=4, accuracy=1.0)},
    calibration=Calibration(
        ece=0.083,
        bins=[
            CalibrationBin(low=0.4, high=0.5, count=4, predicted=0.45, observed=0.4),
            CalibrationBin(low=0.6, high=0.7, count=6, predicted=0.65, observed=0.7),
        ],
    ),
)


def judge_quality(at_chance: bool) -> JudgeQuality:
    accuracy, low, high = (0.52, 0.41, 0.63) if at_chance else (0.78, 0.71, 0.86)
    return JudgeQuality(
        judge="tiny-judge",
        items="builtin:hhh-ours",
        count=120,
        mode="debiased",
        accuracy=accuracy,
        accuracy_low=low,
        accuracy_high=high,
        ece=0.041,
        at_chance=at_chance,
    )


def eval_summary(quality: JudgeQuality | None) -> EvalSummary:
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
        judge_quality=quality,
    )


def status(state: str = "complete", seconds: float | None = 3.0, **summary) -> StageStatus:
    return StageStatus(status=state, config_hash="abc", fingerprint={}, started=0.0, seconds=seconds, summary=summary)


def inputs_with(run_dir: Path, statuses: dict[str, StageStatus], **records) -> ReportInputs:
    """Report inputs for a run whose manifest holds `statuses`; `records` sets the typed inputs present."""
    manifest = Manifest(created=1_700_000_000.0, seed=7, versions={"constitutional": "0.9", "torch": "2.5"})
    manifest = manifest.model_copy(update={"stages": statuses})
    empty = {"summary": None, "traces": [], "comparisons": [], "label_stats": None, "pm_metrics": None}
    return ReportInputs(
        run_dir=run_dir,
        manifest=manifest,
        stages=[StageRow(name, command, statuses.get(name)) for name, command in COMMANDS.items()],
        makers=MAKERS,
        report_stage="report",
        **(empty | records),
    )


def full_inputs(run_dir: Path) -> ReportInputs:
    """Every input present, as a finished run would give them; the report stage is the one writing."""
    statuses = {name: status() for name in COMMANDS}
    statuses["sl_generate"] = status(seconds=12.5, records=5)
    statuses["report"] = status("running", seconds=None)
    return inputs_with(
        run_dir,
        statuses,
        summary=eval_summary(judge_quality(at_chance=False)),
        traces=sl_records(),
        comparisons=comparisons(),
        label_stats=LABEL_STATS,
        pm_metrics=PM_METRICS,
    )


def _section(page: str, section_id: str) -> str:
    match = re.search(rf'<section class="card" id="{section_id}">(.*?)</section>', page, re.S)
    assert match, f"section {section_id} missing"
    return match.group(1)


@pytest.fixture(scope="module")
def full_report(tmp_path_factory) -> tuple[dict, str]:
    """(write_report's answer, the page) for the full run; made once, the plots take a few seconds."""
    folder = tmp_path_factory.mktemp("report")
    answer = write_report(full_inputs(folder), folder / "report.html")
    return answer, Path(answer["path"]).read_text(encoding="utf-8")


def test_full_run_renders_every_section(full_report):
    answer, page = full_report
    assert answer["sections"] == 7 and answer["missing"] == []
    assert "not run yet" not in page.lower()
    run = _section(page, "run")
    assert "12.5" in run and TAG in run and ">7<" in run and "records=5" in run  # seconds, constitution, seed
    assert all(f"<code>{command}</code>" in run for command in COMMANDS.values())
    assert "writing this page" in run and ">running<" not in run  # the report's own row while it writes
    elo = _section(page, "elo")
    assert "helpfulness" in elo and "harmlessness" in elo and "[20, 80]" in elo  # rl's helpfulness interval
    assert elo.count("data:image/png;base64,") == 1
    for section_id in ("pareto", "revisions"):
        assert "data:image/png;base64," in _section(page, section_id)
    harm = _section(page, "harm")
    assert "88%" in harm and "25% " in harm and "1.50" in harm


def test_feedback_section_shows_the_typed_statistics(full_report):
    _, page = full_report
    feedback = _section(page, "feedback")
    assert "25%" in feedback and "0.17" in feedback  # position flips and the mean order gap, as the stage wrote them
    assert "8%" in feedback and "0.52" in feedback  # clamped share, mean p_a
    assert "70%" in feedback and "0.083" in feedback and "40" in feedback  # held-out accuracy, ECE, training pairs
    assert "0.4–0.5" in feedback and "0.650" in feedback  # the calibration bins' table
    assert feedback.count("data:image/png;base64,") == 2  # label plots + reliability diagram


def test_trace_data_resolves_principles_and_keeps_every_step(full_report):
    _, page = full_report
    blob = re.search(r'<script type="application/json" id="trace-data">(.*?)</script>', page, re.S).group(1)
    data = json.loads(blob)
    assert [t["id"] for t in data["traces"]] == ["r0", "r1", "r2", "h0", "x0"]
    assert [s["principle"] for s in data["traces"][0]["steps"]] == ["general-harm", "privacy"]
    texts = data["principles"][TAG]
    assert len(texts["general-harm"]) > 10 and "no-such-principle" not in texts  # unknown ids fall back to the id


def test_report_is_self_contained(full_report):
    _, page = full_report
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert not re.search(r"""url\(\s*["']?\s*(https?:)?//|@import""", page, re.I)
    assert "http://" not in page and "https://" not in page


def test_hostile_text_stays_inert(tmp_path):
    """Model text, names and stage summaries all reach the page as text, never as markup."""
    summary = eval_summary(judge_quality(at_chance=True).model_copy(update={"items": HOSTILE, "judge": HOSTILE}))
    summary = summary.model_copy(update={"judge": HOSTILE})
    metrics = PM_METRICS.model_copy(update={"by_kind": {HOSTILE: KindAccuracy(pairs=1, accuracy=1.0)}})
    statuses = {"sl_generate": status(note=HOSTILE), "report": status("running")}
    page = render(inputs_with(tmp_path, statuses, summary=summary, traces=sl_records(), pm_metrics=metrics))
    assert page.count("&lt;script&gt;alert(&#x27;pwned&#x27;)") >= 4  # judge, items, held-out kind, stage summary
    assert "alert('pwned')" in page.replace("\\u003c", "<")  # the trace text is there, as JSON...
    assert "<script>alert" not in page  # ...but never as markup
    assert page.count("</script>") == page.count("<script")  # nothing closes a script block early


@pytest.mark.parametrize("section_id", JUDGED)
def test_judge_at_chance_is_a_warning_beside_every_judged_figure(section_id, at_chance_page):
    section = _section(at_chance_page, section_id)
    callout = re.search(r'<div class="callout danger"[^>]*>(.*?)</div>', section, re.S)
    assert callout, f"no at-chance warning in {section_id}"
    text = callout.group(1)
    assert "at chance" in text and "builtin:hhh-ours" in text and "must not be read as a result" in text
    assert "52%" in text and "41%–63%" in text and "0.041" in text  # accuracy, its 95% interval, ECE
    assert section.split("</p>", 1)[1].startswith('<div class="callout danger"')  # first, above every figure


@pytest.fixture(scope="module")
def at_chance_page(tmp_path_factory) -> str:
    run_dir = tmp_path_factory.mktemp("chance")
    return render(inputs_with(run_dir, {}, summary=eval_summary(judge_quality(at_chance=True))))


def test_judge_above_chance_shows_its_figures_without_a_warning(full_report):
    _, page = full_report
    assert "callout danger" not in page
    for section_id in JUDGED:
        section = _section(page, section_id)
        assert "Judge quality." in section and "78%" in section and "71%–86%" in section and "0.041" in section


def test_unmeasured_judge_is_said_so(tmp_path):
    page = render(inputs_with(tmp_path, {}, summary=eval_summary(None)))
    assert "callout danger" not in page
    for section_id in JUDGED:
        assert "Judge not measured." in _section(page, section_id)
    assert "evaluate.judge_items" in page


def test_missing_inputs_name_the_commands_that_make_them(tmp_path):
    page = render(inputs_with(tmp_path, {"sl_generate": status()}, traces=sl_records()))
    for section_id in JUDGED:
        assert "Not run yet: run <code>cai eval compare</code> (the <code>evaluate</code> stage)" in _section(
            page, section_id
        )
    feedback = _section(page, "feedback")
    assert "<code>cai rl label</code> (the <code>rl_label</code> stage)" in feedback
    assert "<code>cai pm train</code>" in feedback
    assert "Not run yet" not in _section(page, "traces") and 'id="trace-data"' in page


def test_nothing_run_yet_still_writes_a_page(tmp_path):
    answer = write_report(inputs_with(tmp_path, {}), tmp_path / "report.html")
    assert answer["missing"] == ["elo", "pareto", "revisions", "feedback", "harm", "traces"]
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "0 / 8" in _section(page, "run") and "cai sl generate" in _section(page, "traces")


def test_labels_in_progress_show_the_records_and_wait_for_the_statistics(tmp_path):
    statuses = {"rl_label": status("running")}
    page = render(inputs_with(tmp_path, statuses, comparisons=comparisons()))
    feedback = _section(page, "feedback")
    assert "12 labels written so far" in feedback and "<code>cai rl label</code> completes" in feedback
    assert feedback.count("data:image/png;base64,") == 1  # the order scatter, drawn from the records


def test_labels_scored_in_one_order_and_a_pm_without_calibration(tmp_path):
    one_order = LABEL_STATS.model_copy(update={"position_flip_share": None, "mean_order_gap": None})
    metrics = PM_METRICS.model_copy(update={"calibration": None})
    page = render(inputs_with(tmp_path, {}, label_stats=one_order, pm_metrics=metrics))
    feedback = _section(page, "feedback")
    assert "not scored in both orders" in feedback and "No held-out pairs to calibrate on" in feedback
    assert feedback.count("data:image/png;base64,") == 1  # the histogram only


def test_write_report_replaces_the_page_atomically(tmp_path):
    output = tmp_path / "report.html"
    output.write_text("old page", encoding="utf-8")
    write_report(inputs_with(tmp_path, {}), output)
    assert output.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temporary file left behind
