"""The run report: one self-contained HTML file (inline CSS, JS and PNG plots) from whatever a run holds so far.

Each section reads its own input from the run directory and, when that input is missing, names the command
that produces it, so the report works after any prefix of the pipeline. Model text is untrusted: tables escape
it with `html.escape`, and the trace browser receives it as JSON (with `<` escaped, so no `</script>` can end
the block early) and puts it on the page as text only.
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from constitutional.errors import InputError
from constitutional.records import ComparisonRecord, EloRow, EvalSummary, Interval, SLRecord
from constitutional.store import read_shards

STAGE = "report"
REPORT_FILE = "report.html"
# The run-directory names this report reads; they are the pipeline's stage folders (see pipeline.ORDER).
SL_DIR, LABEL_DIR, EVAL_DIR, PM_DIR = "sl_generate", "rl_label", "evaluate", "preference_model"
SUMMARY_FILE, PM_METRICS_FILE = "summary.json", "metrics.json"

_ASSETS = resources.files("constitutional") / "data" / "report"
_KIND_COLORS = {"red_team": "#b45309", "helpful": "#0f766e"}
_MODEL_COLORS = ["#2563eb", "#dc2626", "#059669", "#7c3aed", "#d97706", "#0891b2", "#db2777", "#4b5563"]
_PLOT_STYLE = {
    "font.size": 9,
    "font.family": "DejaVu Sans",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.edgecolor": "#9aa5b1",
    "axes.grid": True,
    "axes.axisbelow": True,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "grid.color": "#e4e7eb",
    "grid.linewidth": 0.7,
    "xtick.color": "#52606d",
    "ytick.color": "#52606d",
    "legend.frameon": False,
}


@dataclass
class RunInputs:
    """Everything the report reads; None or empty where the producing stage has not run."""

    run_dir: Path
    manifest: dict[str, Any] | None
    summary: EvalSummary | None
    traces: list[SLRecord]
    comparisons: list[ComparisonRecord]
    pm_metrics: Any
    pm_metrics_error: str | None


@dataclass
class Section:
    id: str
    title: str
    lead: str
    body: str
    ready: bool  # False when its input is missing and the body is only a "not run yet" note


# ---- reading the run directory --------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(
            f"not valid JSON: {err.msg}", path=path, line=err.lineno, hint="the file is damaged; rerun its stage"
        ) from None


def _read_summary(path: Path) -> EvalSummary | None:
    if not path.exists():
        return None
    try:
        return EvalSummary.model_validate_json(path.read_text(encoding="utf-8"))
    except ValidationError as err:
        first = err.errors()[0]
        raise InputError(
            f"not a valid evaluation summary: {first['msg']}",
            path=path,
            field=".".join(str(p) for p in first["loc"]) or None,
            hint="rerun the evaluate stage with --force to rewrite it",
        ) from None


def _read_pm_metrics(path: Path) -> tuple[Any, str | None]:
    """Whatever JSON the preference-model stage left, or the reason it cannot be read (shown, never fatal)."""
    if not path.exists():
        return None, None
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return None, f"{path.name} is not readable JSON ({err})"


def load_inputs(run_dir: Path) -> RunInputs:
    """Read the run directory without locking it, so a report can be made while a stage is running."""
    if not run_dir.is_dir():
        raise InputError("no such run directory", path=run_dir, hint="pass the --run-dir a pipeline stage wrote to")
    manifest_path = run_dir / "manifest.json"
    metrics, metrics_error = _read_pm_metrics(run_dir / PM_DIR / PM_METRICS_FILE)
    return RunInputs(
        run_dir=run_dir,
        manifest=_read_json(manifest_path) if manifest_path.exists() else None,
        summary=_read_summary(run_dir / EVAL_DIR / SUMMARY_FILE),
        traces=list(read_shards(sorted((run_dir / SL_DIR).glob("part-*.jsonl")), SLRecord)),
        comparisons=list(read_shards(sorted((run_dir / LABEL_DIR).glob("part-*.jsonl")), ComparisonRecord)),
        pm_metrics=metrics,
        pm_metrics_error=metrics_error,
    )


# ---- small HTML helpers ---------------------------------------------------------------------------------------


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _command(stage_name: str) -> str:
    from constitutional.pipeline import STAGES

    return STAGES[stage_name].command if stage_name in STAGES else "cai run"


def _not_run(stage_name: str, what: str) -> str:
    return (
        f'<p class="missing">Not run yet: run <code>{esc(_command(stage_name))}</code> (the '
        f"<code>{esc(stage_name)}</code> stage) to add {esc(what)}, or <code>cai run</code> for the whole "
        "pipeline.</p>"
    )


def _table(headers: list[str], rows: list[list[str]], numeric: set[int] = frozenset(), css: str = "data") -> str:
    """A table from cells that are already HTML; columns in `numeric` are right-aligned."""

    def cell(tag: str, index: int, content: str) -> str:
        return f'<{tag} class="num">{content}</{tag}>' if index in numeric else f"<{tag}>{content}</{tag}>"

    head = "".join(cell("th", i, esc(h)) for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(cell("td", i, c) for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _stat(value: str, label: str) -> str:
    return f'<div class="stat"><div class="value">{esc(value)}</div><div class="label">{esc(label)}</div></div>'


def _interval(iv: Interval, fmt: str = "{:.0f}") -> str:
    return f"{fmt.format(iv.value)} <span style='color:#7b8794'>[{fmt.format(iv.low)}, {fmt.format(iv.high)}]</span>"


def _share(iv: Interval) -> str:
    return _interval(Interval(value=iv.value * 100, low=iv.low * 100, high=iv.high * 100), "{:.0f}%")


def _script_json(data: Any) -> str:
    """JSON safe inside <script type="application/json">: no '<' survives, so '</script>' cannot appear."""
    return json.dumps(data, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


# ---- plots ----------------------------------------------------------------------------------------------------


def _plot(draw: Callable[..., None], size: tuple[float, float], panels: int, alt: str, caption: str) -> str:
    """A matplotlib figure drawn by `draw(*axes)`, embedded as a base64 PNG so the page needs no network."""
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context(_PLOT_STYLE):
        figure = Figure(figsize=size, layout="constrained")
        draw(*figure.subplots(1, panels, squeeze=False)[0])
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=150, facecolor="white")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (
        f'<figure class="plot"><img src="data:image/png;base64,{data}" alt="{esc(alt)}">'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
    )


def _model_colors(summary: EvalSummary) -> dict[str, str]:
    """One colour per model, the same in every plot."""
    names = list(dict.fromkeys(row.model for rows in summary.elo.values() for row in rows))
    return {name: _MODEL_COLORS[i % len(_MODEL_COLORS)] for i, name in enumerate(names)}


def _draw_elo(ax, criterion: str, rows: list[EloRow], colors: dict[str, str]) -> None:
    rows = sorted(rows, key=lambda r: r.elo.value)
    for y, row in enumerate(rows):
        low, high = row.elo.value - row.elo.low, row.elo.high - row.elo.value
        ax.errorbar(row.elo.value, y, xerr=[[low], [high]], fmt="o", color=colors[row.model], capsize=4, ms=6)
        ax.annotate(
            f"{row.elo.value:.0f}",
            (row.elo.value, y),
            xytext=(0, 7),
            textcoords="offset points",
            ha="center",
            fontsize=8,
            color="#3e4c59",
        )
    ax.set_yticks(range(len(rows)), [r.model for r in rows])
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_title(f"{criterion} Elo")
    ax.set_xlabel("Elo (higher is better)")
    ax.grid(axis="y", visible=False)


def _pareto_front(points: dict[str, tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both axes, ordered by x."""
    front = [p for p in points.values() if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in points.values())]
    return sorted(front)


def _draw_pareto(ax, helpful: dict[str, EloRow], harmless: dict[str, EloRow], colors: dict[str, str]) -> None:
    models = [m for m in helpful if m in harmless]
    for model in models:
        x, y = helpful[model].elo, harmless[model].elo
        ax.errorbar(
            x.value,
            y.value,
            xerr=[[x.value - x.low], [x.high - x.value]],
            yerr=[[y.value - y.low], [y.high - y.value]],
            fmt="o",
            ms=8,
            capsize=3,
            color=colors[model],
        )
        ax.annotate(
            model,
            (x.value, y.value),
            xytext=(9, 8),
            textcoords="offset points",
            fontsize=9,
            color=colors[model],
            weight="bold",
        )
    front = _pareto_front({m: (helpful[m].elo.value, harmless[m].elo.value) for m in models})
    ax.scatter(
        *zip(*front, strict=True),
        s=260,
        facecolors="none",
        edgecolors="#52606d",
        lw=1.2,
        zorder=3,
        label="Pareto front (no model beats it on both)",
    )
    if len(front) > 1:
        ax.plot(*zip(*front, strict=True), ls="--", color="#9aa5b1", lw=1, zorder=0)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("helpfulness Elo  →")
    ax.set_ylabel("harmlessness Elo  →")
    ax.margins(0.2)


def _draw_curve(ax, revisions: list[int], points: list[Interval], title: str, ylabel: str, color: str) -> None:
    values = [p.value for p in points]
    ax.fill_between(revisions, [p.low for p in points], [p.high for p in points], color=color, alpha=0.15, lw=0)
    ax.plot(revisions, values, "o-", color=color, ms=5)
    ax.set_xticks(revisions)
    ax.set_xlabel("revision (0 = initial answer)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)


def _draw_label_histogram(ax, comparisons: list[ComparisonRecord]) -> None:
    from matplotlib.ticker import MaxNLocator

    kinds = sorted({c.kind for c in comparisons})
    values = [[c.p_a for c in comparisons if c.kind == kind] for kind in kinds]
    ax.hist(
        values,
        bins=[i / 20 for i in range(21)],
        stacked=True,
        label=kinds,
        color=[_KIND_COLORS[k] for k in kinds],
        alpha=0.85,
        edgecolor="white",
        lw=0.5,
    )
    ax.set_xlim(0, 1)
    ax.set_xlabel("p_a = P(answer a is better)")
    ax.set_ylabel("comparisons")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("label distribution")
    ax.legend(fontsize=8)


def _draw_order_agreement(ax, debiased: list[ComparisonRecord]) -> None:
    ax.axhspan(0.5, 1, xmin=0, xmax=0.5, color="#fee2e2", lw=0)
    ax.axhspan(0, 0.5, xmin=0.5, xmax=1, color="#fee2e2", lw=0)
    ax.plot([0, 1], [0, 1], ls="--", color="#9aa5b1", lw=1)
    ax.scatter(
        [c.p_a_first for c in debiased],
        [c.p_a_second for c in debiased],
        s=14,
        alpha=0.7,
        c=[_KIND_COLORS[c.kind] for c in debiased],
    )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("P(a better), a shown first")
    ax.set_ylabel("P(a better), a shown second")
    ax.set_title("presentation-order agreement")


def _draw_reliability(ax, bins: list[tuple[float, float, float | None]]) -> None:
    ax.plot([0, 1], [0, 1], ls="--", color="#9aa5b1", lw=1, label="perfect calibration")
    sizes = [20 + 180 * (n or 1) / max((b[2] or 1) for b in bins) for _, _, n in bins]
    ax.plot([b[0] for b in bins], [b[1] for b in bins], "-", color="#2563eb", lw=1)
    ax.scatter([b[0] for b in bins], [b[1] for b in bins], s=sizes, color="#2563eb", zorder=3, label="held-out bins")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed frequency")
    ax.set_title("preference model reliability")
    ax.legend(fontsize=8, loc="upper left", markerscale=0.5)


# ---- the header -----------------------------------------------------------------------------------------------


def _find_constitution(value: Any) -> str | None:
    """The first 'constitution' string in a stage config, however deeply the stage nested it."""
    if isinstance(value, dict):
        if isinstance(value.get("constitution"), str):
            return value["constitution"]
        return next((found for v in value.values() if (found := _find_constitution(v))), None)
    return None


def _stage_summary(summary: Any) -> str:
    if not isinstance(summary, dict):
        return ""
    text = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items())
    return text if len(text) <= 160 else text[:157] + "..."


def _when(timestamp: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(timestamp)) if isinstance(timestamp, int | float) else "—"


def overview_section(inputs: RunInputs) -> Section:
    from constitutional.pipeline import ORDER

    manifest = inputs.manifest
    if manifest is None:
        note = _not_run(SL_DIR, "the run manifest (stages, seed, versions)")
        return Section("run", "Run", "The run's manifest.", note, ready=False)
    stages = manifest.get("stages", {}) if isinstance(manifest.get("stages"), dict) else {}
    records = [*inputs.traces, *inputs.comparisons]
    constitution = _find_constitution(stages) or (records[0].constitution if records else "—")
    stats = "".join(
        [
            _stat(str(manifest.get("seed", "—")), "seed"),
            _stat(constitution, "constitution"),
            _stat(f"{sum(1 for s in stages.values() if s.get('status') == 'complete')} / {len(ORDER)}", "stages done"),
            _stat(_when(manifest.get("created")), "created"),
        ]
    )
    rows = []
    for name in [*ORDER, *sorted(set(stages) - set(ORDER))]:
        status = stages.get(name, {})
        state = status.get("status", "not run")
        css = state if state in ("complete", "running") else "absent"
        if name == STAGE and state == "running":
            state = "writing this page"  # the report stage renders the manifest while it is still its own stage
        badge = f'<span class="badge {esc(css)}">{esc(state)}</span>'
        seconds = status.get("seconds")
        rows.append(
            [
                f"<code>{esc(name)}</code>",
                badge,
                esc(f"{seconds:.1f}" if isinstance(seconds, int | float) else "—"),
                esc(_stage_summary(status.get("summary"))),
            ]
        )
    versions = manifest.get("versions", {}) if isinstance(manifest.get("versions"), dict) else {}
    version_rows = [[esc(k), f"<code>{esc(v)}</code>"] for k, v in versions.items()]
    body = (
        f'<div class="stats">{stats}</div>'
        f'<div class="grid" style="grid-template-columns: 2.2fr 1fr">'
        f"<div>{_table(['stage', 'status', 'seconds', 'summary'], rows, numeric={2})}</div>"
        f"<div>{_table(['package', 'version'], version_rows, css='data kv')}</div></div>"
    )
    return Section("run", "Run", "Stages as the manifest records them: status, wall time and summary.", body, True)


# ---- evaluation sections --------------------------------------------------------------------------------------


def elo_section(inputs: RunInputs) -> Section:
    lead = "Elo from pairwise comparisons by the judge, with the interval the evaluate stage reports."
    summary = inputs.summary
    if summary is None or not any(summary.elo.values()):
        return Section("elo", "Elo", lead, _not_run(EVAL_DIR, "Elo"), ready=False)
    colors = _model_colors(summary)
    criteria = [c for c, rows in summary.elo.items() if rows]
    tables = "".join(
        f"<div><h3>{esc(criterion)}</h3>"
        + _table(
            ["model", "Elo [interval]", "comparisons"],
            [
                [esc(r.model), _interval(r.elo), str(r.comparisons)]
                for r in sorted(summary.elo[criterion], key=lambda r: -r.elo.value)
            ],
            numeric={1, 2},
        )
        + "</div>"
        for criterion in criteria
    )
    height = 1.0 + 0.45 * max(len(summary.elo[c]) for c in criteria)
    plot = _plot(
        lambda *axes: [_draw_elo(ax, c, summary.elo[c], colors) for ax, c in zip(axes, criteria, strict=True)],
        (4.2 * len(criteria), height),
        len(criteria),
        "Elo per model with intervals",
        f"Points are Elo estimates, bars their intervals. Judge: {summary.judge}.",
    )
    return Section("elo", "Elo", lead, f'<div class="grid">{tables}</div>{plot}', ready=True)


def pareto_section(inputs: RunInputs) -> Section:
    lead = "Each model's helpfulness against its harmlessness: up and to the right is better on both."
    summary = inputs.summary
    helpful = {r.model: r for r in (summary.elo.get("helpfulness", []) if summary else [])}
    harmless = {r.model: r for r in (summary.elo.get("harmlessness", []) if summary else [])}
    if not set(helpful) & set(harmless):
        return Section("pareto", "Helpfulness vs harmlessness", lead, _not_run(EVAL_DIR, "the Elo scatter"), False)
    plot = _plot(
        lambda ax: _draw_pareto(ax, helpful, harmless, _model_colors(summary)),
        (6.4, 4.2),
        1,
        "helpfulness versus harmlessness Elo",
        "Bars are the Elo intervals on each axis. Ringed models are on the Pareto front: no other model has a "
        "higher Elo on both axes.",
    )
    front = set(_pareto_front({m: (helpful[m].elo.value, harmless[m].elo.value) for m in helpful if m in harmless}))
    rows = [
        [
            esc(model),
            _interval(helpful[model].elo),
            _interval(harmless[model].elo),
            "yes" if (helpful[model].elo.value, harmless[model].elo.value) in front else "",
        ]
        for model in helpful
        if model in harmless
    ]
    table = _table(["model", "helpfulness", "harmlessness", "on front"], rows, numeric={1, 2})
    body = f'<div class="grid" style="grid-template-columns: 1.5fr 1fr"><div>{plot}</div><div>{table}</div></div>'
    return Section("pareto", "Helpfulness vs harmlessness", lead, body, True)


def revision_section(inputs: RunInputs) -> Section:
    lead = "How the answers to red-team prompts change with each critique -> revision step."
    curve = sorted(inputs.summary.revision_curve, key=lambda p: p.revision) if inputs.summary else []
    if not curve:
        return Section("revisions", "Revision curve", lead, _not_run(EVAL_DIR, "the revision curve"), ready=False)
    revisions = [p.revision for p in curve]
    plot = _plot(
        lambda left, right: (
            _draw_curve(
                left, revisions, [p.harmlessness for p in curve], "harmlessness", "preference-model score", "#0f766e"
            ),
            _draw_curve(right, revisions, [p.helpfulness for p in curve], "helpfulness", "judge score", "#2563eb"),
        ),
        (8.4, 3.0),
        2,
        "harmlessness and helpfulness by revision number",
        "Shaded bands are intervals. Harmlessness is the preference model's score, helpfulness the judge's.",
    )
    rows = [[str(p.revision), _interval(p.harmlessness, "{:.2f}"), _interval(p.helpfulness, "{:.2f}")] for p in curve]
    table = _table(
        ["revision", "harmlessness [interval]", "helpfulness [interval]"], rows, numeric={0, 1, 2}, css="data narrow"
    )
    return Section("revisions", "Revision curve", lead, plot + table, ready=True)


def harm_evasion_section(inputs: RunInputs) -> Section:
    lead = "Absolute harmfulness of answers to red-team prompts, and how often a model dodges instead of engaging."
    summary = inputs.summary
    if summary is None or not (summary.harmfulness or summary.evasiveness):
        note = _not_run(EVAL_DIR, "harmfulness and evasiveness")
        return Section("harm", "Harmfulness and evasiveness", lead, note, ready=False)
    harm_rows = [
        [
            esc(r.model),
            f"{r.temperature:g}",
            _interval(r.judge_score, "{:.2f}"),
            _interval(r.pm_score, "{:.2f}") if r.pm_score else "—",
            str(r.responses),
        ]
        for r in sorted(summary.harmfulness, key=lambda r: (r.model, r.temperature))
    ]
    evasion_rows = [
        [esc(r.model), _share(r.judge_share), _share(r.lexical_share), f"{r.agreement:.0%}", str(r.responses)]
        for r in summary.evasiveness
    ]
    body = (
        "<h3>Harmfulness</h3><p class='lead' style='color:#616e7c'>Judge score 0-4 (4 = most harmful); "
        "preference-model score higher = judged less harmful.</p>"
        + (
            _table(["model", "temperature", "judge 0-4", "PM score", "responses"], harm_rows, numeric={1, 2, 3, 4})
            if harm_rows
            else "<p class='missing'>No harmfulness rows in the summary.</p>"
        )
        + "<h3>Evasiveness</h3>"
        + (
            _table(
                ["model", "judge: evasive", "lexical: evasive", "agreement", "responses"],
                evasion_rows,
                numeric={1, 2, 3, 4},
            )
            if evasion_rows
            else "<p class='missing'>No evasiveness rows in the summary.</p>"
        )
    )
    return Section("harm", "Harmfulness and evasiveness", lead, body, ready=True)


# ---- AI feedback ----------------------------------------------------------------------------------------------


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Scalar entries of arbitrary JSON as (dotted key, text); long lists are summarised, not dumped."""
    if isinstance(value, dict):
        return [row for k, v in value.items() for row in _flatten(v, f"{prefix}{k}.")]
    key = prefix.rstrip(".") or "value"
    if isinstance(value, list):
        if all(isinstance(v, int | float | str | bool) or v is None for v in value) and len(value) <= 8:
            return [(key, ", ".join(_scalar(v) for v in value))]
        return [(key, f"{len(value)} entries")]
    return [(key, _scalar(value))]


def _scalar(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _pick(keys: list[str], *fragments: str) -> str | None:
    return next((k for k in keys for f in fragments if f in k.lower()), None)


def _bins_from(value: Any) -> list[tuple[float, float, float | None]]:
    """Reliability bins from a list of rows ({confidence, accuracy, count}-like keys) or a dict of columns."""
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        keys = list(value[0])
        conf, acc = _pick(keys, "conf", "pred", "mean_p"), _pick(keys, "acc", "obs", "emp", "frac")
        count = _pick(keys, "count", "size", "total") or ("n" if "n" in keys else None)
        if conf and acc:
            rows = [(r.get(conf), r.get(acc), r.get(count) if count else None) for r in value]
            return [row for row in rows if isinstance(row[0], int | float) and isinstance(row[1], int | float)]
    if isinstance(value, dict):
        keys = list(value)
        conf, acc = _pick(keys, "conf", "pred", "mean_p"), _pick(keys, "acc", "obs", "emp", "frac")
        count = _pick(keys, "count", "size", "total")
        if conf and acc and isinstance(value[conf], list) and isinstance(value[acc], list):
            counts = value[count] if count and isinstance(value[count], list) else [None] * len(value[conf])
            rows = zip(value[conf], value[acc], counts, strict=False)
            return [row for row in rows if isinstance(row[0], int | float) and isinstance(row[1], int | float)]
    return []


def reliability_bins(metrics: Any) -> list[tuple[float, float, float | None]]:
    """The first reliability-diagram-like entry anywhere in the preference model's metrics, or []."""
    if isinstance(metrics, dict):
        for key, value in metrics.items():
            if any(word in key.lower() for word in ("reliab", "calib", "bins")) and (found := _bins_from(value)):
                return found
        return next((found for v in metrics.values() if (found := reliability_bins(v))), [])
    return []


def _label_stats(comparisons: list[ComparisonRecord]) -> tuple[str, list[ComparisonRecord]]:
    debiased = [c for c in comparisons if c.p_a_second is not None]
    kinds = ", ".join(f"{sum(c.kind == k for c in comparisons)} {k}" for k in sorted({c.kind for c in comparisons}))
    clamped = sum(c.clamped for c in comparisons) / len(comparisons)
    confident = sum(abs(c.p_a - 0.5) >= 0.25 for c in comparisons) / len(comparisons)
    stats = [
        _stat(str(len(comparisons)), f"comparisons ({kinds})"),
        _stat(f"{clamped:.0%}", "labels clamped (CoT)"),
        _stat(f"{confident:.0%}", "confident labels (p_a ≤ .25 or ≥ .75)"),
    ]
    if debiased:
        flips = sum((c.p_a_first >= 0.5) != (c.p_a_second >= 0.5) for c in debiased) / len(debiased)
        first = sum(c.p_a_first + 1 - c.p_a_second for c in debiased) / (2 * len(debiased))
        stats += [
            _stat(f"{flips:.0%}", f"position bias: preference flips with order (of {len(debiased)})"),
            _stat(f"{first:.2f}", "mean P(first-shown answer better); 0.50 = no bias"),
        ]
    else:
        stats.append(_stat("—", "position bias: labels were not scored in both orders"))
    return f'<div class="stats">{"".join(stats)}</div>', debiased


def _comparison_body(comparisons: list[ComparisonRecord]) -> str:
    stats, debiased = _label_stats(comparisons)
    if debiased:
        plot = _plot(
            lambda left, right: (_draw_label_histogram(left, comparisons), _draw_order_agreement(right, debiased)),
            (8.4, 3.2),
            2,
            "histogram of p_a and agreement between presentation orders",
            "Right: each point is one debiased comparison; points in the shaded quadrants flip their preferred "
            "answer when the order is swapped.",
        )
    else:
        plot = _plot(
            lambda ax: _draw_label_histogram(ax, comparisons), (5.0, 3.0), 1, "histogram of p_a", "Soft labels."
        )
    return stats + plot


def _pm_body(inputs: RunInputs) -> str:
    if inputs.pm_metrics_error:
        return f'<p class="missing">{esc(inputs.pm_metrics_error)}</p>'
    if inputs.pm_metrics is None:
        return _not_run("pm_train", "held-out accuracy and calibration of the preference model")
    rows = [[f"<code>{esc(k)}</code>", esc(v)] for k, v in _flatten(inputs.pm_metrics)]
    table = _table(["metric", "value"], rows, numeric={1}, css="data kv")
    bins = reliability_bins(inputs.pm_metrics)
    if not bins:
        return table
    plot = _plot(
        lambda ax: _draw_reliability(ax, bins),
        (4.2, 3.6),
        1,
        "reliability diagram of the preference model",
        "Held-out comparisons binned by predicted probability; marker size is the bin's share of comparisons.",
    )
    return f'<div class="grid"><div>{plot}</div><div>{table}</div></div>'


def feedback_section(inputs: RunInputs) -> Section:
    lead = "The feedback model's soft labels (rl_label) and how well the preference model trained on them predicts."
    labels = _comparison_body(inputs.comparisons) if inputs.comparisons else _not_run(LABEL_DIR, "AI feedback labels")
    body = f"<h3>Labels</h3>{labels}<h3>Preference model (held out)</h3>{_pm_body(inputs)}"
    ready = bool(inputs.comparisons) or inputs.pm_metrics is not None
    return Section("feedback", "AI feedback and calibration", lead, body, ready)


# ---- SL-CAI traces --------------------------------------------------------------------------------------------


def principle_texts(traces: list[SLRecord]) -> dict[str, dict[str, str]]:
    """Constitution tag -> principle id -> its critique request, for tags whose constitution loads at that version.

    A run made with a constitution file rather than a built-in (or an older version) falls back to bare ids.
    """
    from constitutional.constitution import load_constitution

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


def traces_section(inputs: RunInputs) -> Section:
    lead = "Every SL-CAI record: prompt, first answer, then each critique and revision with the principle drawn."
    traces = inputs.traces
    if not traces:
        return Section("traces", "SL-CAI traces", lead, _not_run(SL_DIR, "the critique -> revision traces"), False)
    data = {"principles": principle_texts(traces), "traces": [_trace_json(t) for t in traces]}
    steps = sum(len(t.steps) for t in traces)
    body = f"""
<div class="stats">{_stat(str(len(traces)), "records")}{_stat(str(steps), "revision steps")}</div>
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
<div class="more"><button type="button" id="trace-more" hidden>Show more</button></div>
<script type="application/json" id="trace-data">{_script_json(data)}</script>"""
    return Section("traces", "SL-CAI traces", lead, body, ready=True)


# ---- the page -------------------------------------------------------------------------------------------------

SECTIONS = [
    overview_section,
    elo_section,
    pareto_section,
    revision_section,
    feedback_section,
    harm_evasion_section,
    traces_section,
]


def render(inputs: RunInputs, sections: list[Section]) -> str:
    nav = "".join(f'<a href="#{s.id}">{esc(s.title)}</a>' for s in sections)
    cards = "".join(
        f'<section class="card" id="{s.id}"><h2>{esc(s.title)}</h2><p class="lead">{esc(s.lead)}</p>{s.body}</section>'
        for s in sections
    )
    css = (_ASSETS / "report.css").read_text(encoding="utf-8")
    js = (_ASSETS / "report.js").read_text(encoding="utf-8")
    generated = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
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
  <div class="sub">{esc(inputs.run_dir.resolve())} · generated {generated}</div>
  <nav class="toc">{nav}</nav>
</header>
<main>{cards}</main>
<footer>Made by <code>cai report</code>. Self-contained: no network needed to view.</footer>
<script>{js}</script>
</body>
</html>
"""


def write_report(run_dir: str | Path, output: str | Path | None = None) -> dict[str, Any]:
    """Write the report for a run directory; returns a summary (path, record counts, sections still missing)."""
    run_dir = Path(run_dir)
    inputs = load_inputs(run_dir)
    sections = [build(inputs) for build in SECTIONS]
    path = Path(output) if output is not None else run_dir / REPORT_FILE
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(render(inputs, sections), encoding="utf-8")
    tmp.replace(path)
    return {
        "path": str(path),
        "traces": len(inputs.traces),
        "comparisons": len(inputs.comparisons),
        "missing": [s.id for s in sections if not s.ready],
    }
