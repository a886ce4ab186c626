"""The whole page: every section in order, the inline CSS and JS, and the atomic write."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from constitutional.report.evaluation import elo_section, harm_evasion_section, pareto_section, revision_section
from constitutional.report.html import Section, esc
from constitutional.report.inputs import ReportInputs
from constitutional.report.labels import feedback_section
from constitutional.report.run import run_section, when
from constitutional.report.traces import traces_section

ASSETS = resources.files("constitutional") / "data" / "report"
SECTIONS: list[Callable[[ReportInputs], Section]] = [
    run_section,
    elo_section,
    pareto_section,
    revision_section,
    feedback_section,
    harm_evasion_section,
    traces_section,
]


def sections(inputs: ReportInputs) -> list[Section]:
    return [build(inputs) for build in SECTIONS]


def page(inputs: ReportInputs, built: list[Section]) -> str:
    nav = "".join(f'<a href="#{s.id}">{esc(s.title)}</a>' for s in built)
    cards = "".join(
        f'<section class="card" id="{s.id}"><h2>{esc(s.title)}</h2><p class="lead">{esc(s.lead)}</p>{s.body}</section>'
        for s in built
    )
    css = (ASSETS / "report.css").read_text(encoding="utf-8")
    js = (ASSETS / "report.js").read_text(encoding="utf-8")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Run report — {esc(inputs.run_dir.name)}</title>
<style>{css}</style>
</head>
<body>
<header class="top">
  <h1>Constitutional AI run report</h1>
  <div class="sub">{esc(inputs.run_dir.resolve())} · generated {when(time.time())}</div>
  <nav class="toc">{nav}</nav>
</header>
<main>{cards}</main>
<footer>Made by <code>cai report</code>. Self-contained: no network needed to view.</footer>
<script>{js}</script>
</body>
</html>
"""


def render(inputs: ReportInputs) -> str:
    """The whole report as one self-contained HTML page."""
    return page(inputs, sections(inputs))


def write_report(inputs: ReportInputs, output: Path) -> dict[str, Any]:
    """Write the page to `output` atomically; returns its path, the section count and the sections still missing."""
    built = sections(inputs)
    tmp = output.with_name(output.name + ".tmp")
    try:
        tmp.write_text(page(inputs, built), encoding="utf-8")
        # A reader (or a browser reloading) sees the old page or the new one, never half of one.
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return {"path": str(output), "sections": len(built), "missing": [s.id for s in built if not s.ready]}
