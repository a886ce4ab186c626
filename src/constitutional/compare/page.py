"""The side-by-side page (`render_page`): one self-contained HTML document from a `CompareSummary`."""

from __future__ import annotations

import time
from importlib import resources

from constitutional.compare.spec import BUILTIN, COLLECTIVE, SIDES
from constitutional.compare.summary import CompareSummary
from constitutional.records import Interval
from constitutional.report.html import callout, esc, interval, stat, stats, table

TITLES = {COLLECTIVE: "collective constitution", BUILTIN: "built-in constitution"}
ASSETS = resources.files("constitutional") / "data" / "report"


# ---- the page ---------------------------------------------------------------------------------------------------


def _link(href: str | None, text: str) -> str:
    return f'<a href="{esc(href)}">{esc(text)}</a>' if href else esc(text)


def _quality(summary: CompareSummary) -> str:
    """The judge's accuracy on items with known answers, measured by each run's evaluate stage."""
    measured = {side: run.judge_quality for side, run in summary.runs.items() if run.judge_quality}
    if not measured:
        return callout(
            "info",
            "Judge not measured.",
            "Neither run measured its judge on items with known answers (<code>evaluate.judge_items</code>), so "
            "nothing here says whether its verdicts beat a coin.",
        )
    quality = next(iter(measured.values()))
    figures = (
        f"<code>{esc(quality.judge)}</code>: accuracy {quality.accuracy:.0%} (95% interval "
        f"{quality.accuracy_low:.0%}–{quality.accuracy_high:.0%}) on <code>{esc(quality.items)}</code> "
        f"({quality.count} items, {esc(quality.mode)})"
    )
    if any(q.at_chance for q in measured.values()):
        return callout(
            "danger",
            "The judge is at chance.",
            f"{figures}. Its interval does not lie above 50%: every Elo and adherence figure on this page is the "
            "judge's noise and must not be read as a result. Put a stronger judge in the recipe's "
            "<code>models.judge</code>.",
        )
    return callout("info", "Judge quality.", f"{figures}. The adherence questions are a different task.")


def _adherence_section(summary: CompareSummary) -> str:
    cells = {(c.model, c.constitution): c for c in summary.adherence}

    def cell(model: str, constitution: str) -> str:
        found = cells.get((model, constitution))
        if found is None:
            return "—"
        value = found.adherence
        shown = Interval(value=value.value * 100, low=value.low * 100, high=value.high * 100)
        return f"{interval(shown, '{:.0f}%')} <span class='range'>({found.answers} answers)</span>"

    headers = [
        "model trained on ↓ · scored against →",
        *(f"{TITLES[s]} ({summary.runs[s].constitution})" for s in SIDES),
    ]
    rows = [[esc(f"{TITLES[m]} ({summary.runs[m].candidate})"), *(cell(m, c) for c in SIDES)] for m in SIDES]
    judge = summary.judge
    settings = summary.settings
    lead = (
        f"<p class='hint'>P(the answer follows the principle), by the judge <code>{esc(judge.judge)}</code>, "
        f"averaged over {settings.principles} principle(s) drawn from each constitution and over each model's "
        f"held-out answers; intervals: {settings.confidence:.0%} bootstrap over answers. Each question is asked "
        "both ways (follows? / goes against?) so a judge that always says Yes scores 50%, not 100%.</p>"
    )
    behaviour = stats(
        stat(f"{judge.consistent:.0%}", "items answered consistently both ways"),
        stat(f"{judge.mean_p_yes:.2f}", "mean P(Yes) (0.5 = no leaning)"),
        stat(str(judge.questions), "questions asked"),
    )
    warn = ""
    if summary.adherence and judge.at_chance:
        warn = callout(
            "danger",
            "The judge's answers do not depend on the question.",
            f"It gives opposite answers to 'follows?' and 'goes against?' on {judge.consistent:.0%} of items, not "
            "significantly more than a coin would (50%): it is not reading the principles, and the table above is "
            "noise.",
        )
    return lead + table(headers, rows, numeric={1, 2}) + behaviour + warn


def _elo_section(summary: CompareSummary) -> str:
    criteria = sorted({c for run in summary.runs.values() for c in run.elo})
    if not criteria:
        return '<p class="missing">No Elo yet: neither run has an evaluation summary.</p>'
    parts = [
        "<p class='hint'>Each run's Elo is fitted among its own models (mean 0), so values are comparable across "
        "runs through the shared base model: the columns 'vs base' are each model's gain over the same base "
        "model, judged on the same prompts by the same judge.</p>"
    ]
    for criterion in criteria:
        by_side = {side: {row.model: row for row in run.elo.get(criterion, [])} for side, run in summary.runs.items()}
        models = list(dict.fromkeys(m for rows in by_side.values() for m in rows))
        headers = ["model"]
        for side in SIDES:
            headers += [f"Elo: {TITLES[side]} run", "vs base"]
        rows = []
        for model in models:
            row = [esc(model)]
            for side in SIDES:
                found, base = by_side[side].get(model), by_side[side].get("base")
                row.append(interval(found.elo, "{:+.0f}") if found else "—")
                row.append(f"{found.elo.value - base.elo.value:+.0f}" if found and base else "—")
            rows.append(row)
        parts.append(f"<h3>{esc(criterion)}</h3>" + table(headers, rows, numeric={1, 2, 3, 4}))
    return "".join(parts)


def _principles_section(summary: CompareSummary) -> str:
    parts = []
    for constitution in SIDES:
        rows = [
            [f"<code>{esc(p.id)}</code>", esc(p.text), *(_percent(p.adherence.get(m)) for m in SIDES)]
            for p in summary.principles
            if p.constitution == constitution
        ]
        if rows:
            headers = ["principle", "question", *(f"{TITLES[m]} model" for m in SIDES)]
            title = f"{TITLES[constitution]} ({summary.runs[constitution].constitution})"
            parts.append(f"<h3>{esc(title)}</h3>" + table(headers, rows, numeric={2, 3}))
    return "".join(parts) or '<p class="missing">No principle was scored.</p>'


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


def _runs_section(summary: CompareSummary) -> str:
    rows = [
        [
            esc(TITLES[side]),
            f"<code>{esc(run.constitution)}</code>",
            f"<code>{esc(run.run_dir)}</code>",
            f"{esc(run.candidate)}: <code>{esc(run.model_name)}</code>",
            _link(run.report, "report") if run.report else "no report (its stage has not run)",
        ]
        for side, run in summary.runs.items()
    ]
    build = f" ({_link(summary.build_page, 'its build report')})" if summary.build_page else ""
    sources = (
        f"<p>The collective constitution, {_link(summary.constitution_file, summary.constitution_file)}, was "
        f"built from <code>{esc(summary.export)}</code>{build}.</p>"
    )
    attribution = f'<p class="hint">Data attribution: {esc(summary.attribution)}</p>' if summary.attribution else ""
    return table(["run", "constitution", "directory", "model scored", "its report"], rows) + sources + attribution


def render_page(summary: CompareSummary) -> str:
    """The side-by-side page: one self-contained HTML document; every text from a file or a model is escaped."""
    sections = [
        ("runs", "The two runs", "The same recipe twice; only the constitution differs.", _runs_section(summary)),
        (
            "adherence",
            "Adherence to each constitution",
            "Both models scored against both constitutions: the diagonal is each model against its own.",
            _quality(summary) + _adherence_section(summary),
        ),
        (
            "elo",
            "Elo per criterion",
            "Each run's pairwise Elo, side by side.",
            _quality(summary) + _elo_section(summary),
        ),
        ("principles", "Per principle", "Adherence to each drawn principle, per model.", _principles_section(summary)),
    ]
    nav = "".join(f'<a href="#{key}">{esc(title)}</a>' for key, title, _, _ in sections)
    cards = "".join(
        f'<section class="card" id="{key}"><h2>{esc(title)}</h2><p class="lead">{esc(lead)}</p>{body}</section>'
        for key, title, lead, body in sections
    )
    css = (ASSETS / "report.css").read_text(encoding="utf-8")
    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime())
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Collective vs built-in constitution</title>
<style>{css}</style>
</head>
<body>
<header class="top">
  <h1>Collective vs built-in constitution</h1>
  <div class="sub">{esc(summary.runs[COLLECTIVE].constitution)} vs {esc(summary.runs[BUILTIN].constitution)} ·
  generated {esc(stamp)} in {summary.seconds:.0f} s</div>
  <nav class="toc">{nav}</nav>
</header>
<main>{cards}</main>
<footer>Made by <code>cai ccai compare</code>. Self-contained: no network needed to view.</footer>
</body>
</html>
"""
