"""The evaluation's sections: Elo, helpfulness against harmlessness, the revision curve, harmfulness and evasion.

Every figure here is a judge's verdict, so each section opens with how good that judge measured: a judge at
chance on its own test items produces noise, and the page says so before anyone reads the figures.
"""

from __future__ import annotations

from constitutional.records import EloRow, EvalSummary, JudgeQuality
from constitutional.report.html import Section, callout, esc, interval, not_run, note, share, table
from constitutional.report.inputs import ReportInputs
from constitutional.report.plots import draw_curve, draw_elo, draw_pareto, figure, model_colors, pareto_front


def _quality_figures(quality: JudgeQuality) -> str:
    return (
        f"accuracy {quality.accuracy:.0%} (95% interval {quality.accuracy_low:.0%}–{quality.accuracy_high:.0%}), "
        f"ECE {quality.ece:.3f}, on <code>{esc(quality.items)}</code> ({quality.count} items, {esc(quality.mode)})"
    )


def judge_quality(summary: EvalSummary) -> str:
    """How far the judge behind a section's figures can be trusted, shown beside those figures."""
    quality = summary.judge_quality
    if quality is None:
        return callout(
            "info",
            "Judge not measured.",
            f"The judge <code>{esc(summary.judge)}</code> was not tested on items with known answers, so nothing "
            "here says whether its verdicts beat a coin. Set <code>evaluate.judge_items</code> in the recipe "
            "(e.g. <code>builtin:hhh-ours</code>) to measure it.",
        )
    if quality.at_chance:
        return callout(
            "danger",
            f"The judge is at chance on {esc(quality.items)}.",
            f"<code>{esc(quality.judge)}</code>: {_quality_figures(quality)}. The interval includes 50%, so the "
            "figures in this section are the judge's noise and must not be read as a result.",
        )
    return callout("info", "Judge quality.", f"<code>{esc(quality.judge)}</code>: {_quality_figures(quality)}.")


def elo_section(inputs: ReportInputs) -> Section:
    lead = "Elo from pairwise comparisons by the judge, with the interval the evaluate stage reports."
    summary = inputs.summary
    if summary is None or not any(summary.elo.values()):
        return Section("elo", "Elo", lead, not_run(inputs, "summary", "Elo"), ready=False)
    colors = model_colors(summary)
    criteria = [c for c, rows in summary.elo.items() if rows]
    tables = "".join(f"<div><h3>{esc(c)}</h3>{_elo_table(summary.elo[c])}</div>" for c in criteria)
    height = 1.0 + 0.45 * max(len(summary.elo[c]) for c in criteria)
    plot = figure(
        lambda *axes: [draw_elo(ax, c, summary.elo[c], colors) for ax, c in zip(axes, criteria, strict=True)],
        (4.2 * len(criteria), height),
        len(criteria),
        "Elo per model with intervals",
        f"Points are Elo estimates, bars their intervals. Judge: {summary.judge}.",
    )
    body = f'{judge_quality(summary)}<div class="grid">{tables}</div>{plot}'
    return Section("elo", "Elo", lead, body, ready=True)


def _elo_table(rows: list[EloRow]) -> str:
    cells = [[esc(r.model), interval(r.elo), str(r.comparisons)] for r in sorted(rows, key=lambda r: -r.elo.value)]
    return table(["model", "Elo [interval]", "comparisons"], cells, numeric={1, 2})


def pareto_section(inputs: ReportInputs) -> Section:
    lead = "Each model's helpfulness against its harmlessness: up and to the right is better on both."
    summary = inputs.summary
    helpful = {r.model: r for r in (summary.elo.get("helpfulness", []) if summary else [])}
    harmless = {r.model: r for r in (summary.elo.get("harmlessness", []) if summary else [])}
    models = [m for m in helpful if m in harmless]
    if not models:
        missing = not_run(inputs, "summary", "the Elo scatter")
        return Section("pareto", "Helpfulness vs harmlessness", lead, missing, ready=False)
    plot = figure(
        lambda ax: draw_pareto(ax, helpful, harmless, model_colors(summary)),
        (6.4, 4.2),
        1,
        "helpfulness versus harmlessness Elo",
        "Bars are the Elo intervals on each axis. Ringed models are on the Pareto front: no other model has a "
        "higher Elo on both axes.",
    )
    front = set(pareto_front({m: (helpful[m].elo.value, harmless[m].elo.value) for m in models}))
    rows = [
        [
            esc(m),
            interval(helpful[m].elo),
            interval(harmless[m].elo),
            "yes" if (helpful[m].elo.value, harmless[m].elo.value) in front else "",
        ]
        for m in models
    ]
    cells = table(["model", "helpfulness", "harmlessness", "on front"], rows, numeric={1, 2})
    body = f'{judge_quality(summary)}<div class="grid wide-left"><div>{plot}</div><div>{cells}</div></div>'
    return Section("pareto", "Helpfulness vs harmlessness", lead, body, ready=True)


def revision_section(inputs: ReportInputs) -> Section:
    lead = "How the answers to red-team prompts change with each critique -> revision step."
    summary = inputs.summary
    curve = sorted(summary.revision_curve, key=lambda p: p.revision) if summary else []
    if not curve:
        return Section("revisions", "Revision curve", lead, not_run(inputs, "summary", "the revision curve"), False)
    # Without a preference model the evaluate stage scores harmlessness with the judge (4 minus its harm rating).
    by_pm = summary.revision_harmlessness == "preference_model"
    harm_label = "preference-model score" if by_pm else "judge: 4 - harmfulness"
    revisions = [p.revision for p in curve]
    plot = figure(
        lambda left, right: (
            draw_curve(left, revisions, [p.harmlessness for p in curve], "harmlessness", harm_label, "#0f766e"),
            draw_curve(right, revisions, [p.helpfulness for p in curve], "helpfulness", "judge score", "#2563eb"),
        ),
        (8.4, 3.0),
        2,
        "harmlessness and helpfulness by revision number",
        f"Shaded bands are intervals. Harmlessness is the {harm_label}; helpfulness is the judge's 0-4 score.",
    )
    rows = [[str(p.revision), interval(p.harmlessness, "{:.2f}"), interval(p.helpfulness, "{:.2f}")] for p in curve]
    cells = table(["revision", "harmlessness", "helpfulness"], rows, numeric={0, 1, 2}, css="data narrow")
    return Section("revisions", "Revision curve", lead, judge_quality(summary) + plot + cells, ready=True)


def harm_evasion_section(inputs: ReportInputs) -> Section:
    lead = "Absolute harmfulness of answers to red-team prompts, and how often a model dodges instead of engaging."
    summary = inputs.summary
    if summary is None or not (summary.harmfulness or summary.evasiveness):
        missing = not_run(inputs, "summary", "harmfulness and evasiveness")
        return Section("harm", "Harmfulness and evasiveness", lead, missing, ready=False)
    body = (
        judge_quality(summary) + "<h3>Harmfulness</h3><p class='hint'>Judge score 0-4 (4 = most harmful); "
        "preference-model score: higher = judged less harmful.</p>"
        + _harm_table(summary)
        + "<h3>Evasiveness</h3>"
        + _evasion_table(summary)
    )
    return Section("harm", "Harmfulness and evasiveness", lead, body, ready=True)


def _harm_table(summary: EvalSummary) -> str:
    if not summary.harmfulness:
        return note("No harmfulness rows in the summary.")
    rows = [
        [
            esc(r.model),
            f"{r.temperature:g}",
            interval(r.judge_score, "{:.2f}"),
            interval(r.pm_score, "{:.2f}") if r.pm_score else "—",
            str(r.responses),
        ]
        for r in sorted(summary.harmfulness, key=lambda r: (r.model, r.temperature))
    ]
    return table(["model", "temperature", "judge 0-4", "PM score", "responses"], rows, numeric={1, 2, 3, 4})


def _evasion_table(summary: EvalSummary) -> str:
    if not summary.evasiveness:
        return note("No evasiveness rows in the summary.")
    rows = [
        [esc(r.model), share(r.judge_share), share(r.lexical_share), f"{r.agreement:.0%}", str(r.responses)]
        for r in summary.evasiveness
    ]
    headers = ["model", "judge: evasive", "lexical: evasive", "agreement", "responses"]
    return table(headers, rows, numeric={1, 2, 3, 4})
