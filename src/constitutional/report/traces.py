"""The SL-CAI trace browser: every critique -> revision record, searchable and filterable in the page.

Model text is untrusted. It reaches the page only as JSON inside a data block (with '<' escaped, so nothing can
end the block early), and report.js puts it on screen through textContent, never as markup.
"""

from __future__ import annotations

from typing import Any

from constitutional.constitution import load_constitution
from constitutional.errors import InputError
from constitutional.records import SLRecord
from constitutional.report.html import Section, not_run, script_json, stat, stats
from constitutional.report.inputs import ReportInputs

TOOLBAR = """
<div class="toolbar">
  <input type="search" id="trace-search" placeholder="Search prompts, answers, critiques, principles…"
         aria-label="search traces">
  <select id="trace-kind" aria-label="filter by kind">
    <option value="">all kinds</option><option value="red_team">red-team</option>
    <option value="helpful">helpful</option>
  </select>
  <select id="trace-principle" aria-label="filter by principle"><option value="">all principles</option></select>
  <span class="count" id="trace-count"></span>
</div>
<div id="trace-list"></div>
<div class="more"><button type="button" id="trace-more" hidden>Show more</button></div>"""


def principle_texts(traces: list[SLRecord]) -> dict[str, dict[str, str]]:
    """Constitution tag -> principle id -> its critique request, for tags whose constitution loads at that version.

    A run made with a constitution file rather than a built-in (or an older version) falls back to bare ids.
    """
    texts: dict[str, dict[str, str]] = {}
    for tag in sorted({t.constitution for t in traces}):
        try:
            constitution = load_constitution(tag.split("@")[0])
        except InputError:
            continue
        if constitution.tag == tag:
            texts[tag] = {p.id: p.critique for p in constitution.critique_revision}
    return texts


def _trace_json(trace: SLRecord) -> dict[str, Any]:
    return {
        "id": trace.id,
        "kind": trace.kind,
        "prompt": [{"role": m.get("role", ""), "content": m.get("content", "")} for m in trace.prompt],
        "initial": trace.initial,
        "steps": [s.model_dump() for s in trace.steps],
        "model": trace.model,
        "constitution": trace.constitution,
    }


def traces_section(inputs: ReportInputs) -> Section:
    lead = "Every SL-CAI record: prompt, first answer, then each critique and revision with the principle drawn."
    traces = inputs.traces
    if not traces:
        missing = not_run(inputs, "traces", "the critique -> revision traces")
        return Section("traces", "SL-CAI traces", lead, missing, ready=False)
    data = {"principles": principle_texts(traces), "traces": [_trace_json(t) for t in traces]}
    cards = stats(stat(str(len(traces)), "records"), stat(str(sum(len(t.steps) for t in traces)), "revision steps"))
    block = f'<script type="application/json" id="trace-data">{script_json(data)}</script>'
    return Section("traces", "SL-CAI traces", lead, cards + TOOLBAR + block, ready=True)
