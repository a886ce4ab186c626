"""What the report is made from: one typed object, built by the stage definitions from a run view.

The report never reads the run directory and imports no stage module. Whoever builds these inputs decides where
each one comes from; `makers` and `stages` let a section whose input is missing name the command that makes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from constitutional.records import ComparisonRecord, EvalSummary, LabelStats, PMMetrics, SLRecord
from constitutional.runview import Manifest, StageStatus


@dataclass(frozen=True)
class StageRow:
    name: str  # stage name, e.g. "sl_generate"
    command: str  # the CLI command that runs it, e.g. "cai sl generate"
    status: StageStatus | None  # from runview; None when the stage has not run


@dataclass(frozen=True)
class ReportInputs:
    run_dir: Path
    manifest: Manifest  # runview.Manifest (seed, versions, created, stages)
    stages: list[StageRow]  # every stage, in pipeline order
    makers: dict[str, str]  # input -> command that produces it: keys "traces", "comparisons", "pm_metrics", "summary"
    report_stage: str  # the report's own stage name: its row reads "writing this page", not "running"
    summary: EvalSummary | None  # the evaluation's conclusions (with judge_quality)
    traces: list[SLRecord]  # SL-CAI critique -> revision records
    comparisons: list[ComparisonRecord]  # AI-feedback labels
    label_stats: LabelStats | None  # the rl_label stage's typed statistics
    pm_metrics: PMMetrics | None  # the preference model's held-out metrics

    def maker(self, key: str) -> tuple[str, str | None]:
        """(command, stage name) that produces input `key`; the whole pipeline when no builder named one."""
        command = self.makers.get(key, "cai run")
        stage = next((row.name for row in self.stages if row.command == command), None)
        return command, stage
