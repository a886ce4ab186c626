"""The run section: seed, constitution, package versions and every stage's status, as the manifest records them."""

from __future__ import annotations

import time
from typing import Any

from constitutional.report.html import Section, esc, stat, stats, table
from constitutional.report.inputs import ReportInputs, StageRow

SUMMARY_CHARS = 160  # a stage summary longer than this is cut: the manifest has the rest


def when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(timestamp))


def _summary_text(summary: dict[str, Any]) -> str:
    text = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items())
    return text if len(text) <= SUMMARY_CHARS else text[: SUMMARY_CHARS - 3] + "..."


def _rows(inputs: ReportInputs) -> list[StageRow]:
    """Every stage the builder named, then any other the manifest holds (a stage an older version ran)."""
    known = {row.name for row in inputs.stages}
    extra = [StageRow(name, "—", s) for name, s in sorted(inputs.manifest.stages.items()) if name not in known]
    return [*inputs.stages, *extra]


def _state(row: StageRow, report_stage: str) -> tuple[str, str]:
    """(label, css class) of a stage's badge."""
    if row.status is None:
        return "not run", "absent"
    if row.name == report_stage and not row.status.complete:
        # The page is rendered while its own stage is still marked running in the manifest.
        return "writing this page", "running"
    return row.status.status, row.status.status


def _stage_table(inputs: ReportInputs) -> str:
    rows = []
    for row in _rows(inputs):
        label, css = _state(row, inputs.report_stage)
        seconds = row.status.seconds if row.status else None
        rows.append(
            [
                f"<code>{esc(row.name)}</code>",
                f"<code>{esc(row.command)}</code>",
                f'<span class="badge {css}">{esc(label)}</span>',
                "—" if seconds is None else f"{seconds:.1f}",
                esc(_summary_text(row.status.summary) if row.status else ""),
            ]
        )
    return table(["stage", "command", "status", "seconds", "summary"], rows, numeric={3})


def run_section(inputs: ReportInputs) -> Section:
    manifest = inputs.manifest
    tags = sorted({r.constitution for r in [*inputs.traces, *inputs.comparisons]})
    done = sum(1 for row in inputs.stages if row.status is not None and row.status.complete)
    cards = stats(
        stat(str(manifest.seed), "seed"),
        stat(", ".join(tags) or "—", "constitution"),
        stat(f"{done} / {len(inputs.stages)}", "stages done"),
        stat(when(manifest.created), "created"),
    )
    versions = table(
        ["package", "version"],
        [[esc(k), f"<code>{esc(v)}</code>"] for k, v in manifest.versions.items()],
        css="data kv",
    )
    body = f'{cards}<div class="grid wide-left"><div>{_stage_table(inputs)}</div><div>{versions}</div></div>'
    return Section("run", "Run", "Stages as the manifest records them: status, wall time and summary.", body, True)
