"""HTML fragments of the classifier evaluation for the report: ROC and precision-recall curves (inline SVG drawn
by matplotlib, so the page needs nothing from the network), the summary table and the per-category table.

They read only `ClassifierMetrics` (as the evaluation stage wrote them to JSON), never a model. Tables use the
report's `data` / `num` classes; everything that came from a file is escaped.
"""

from __future__ import annotations

import html
import io
from collections.abc import Sequence

from constitutional.classifiers.metrics import ClassifierMetrics

COLORS = ["#2563eb", "#dc2626", "#059669", "#7c3aed", "#d97706", "#0891b2", "#db2777", "#4b5563"]
GUIDE = {"ls": "--", "color": "#9aa5b1", "lw": 1}


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def curves_figure(metrics: Sequence[ClassifierMetrics], title: str) -> str:
    """A <figure> with the ROC curves (a dot at each classifier's calibrated threshold) and the PR curves."""
    import matplotlib
    from matplotlib.figure import Figure

    drawn = [m for m in metrics if m.roc is not None and m.pr is not None]
    if not drawn:
        return f"<p>{_esc(title)}: no curves, as the set lacks restricted or benign items.</p>"
    with matplotlib.rc_context({"svg.hashsalt": "constitutional", "svg.fonttype": "none", "font.size": 9}):
        figure = Figure(figsize=(9, 3.6), layout="constrained")
        roc, pr = figure.subplots(1, 2)
        for index, m in enumerate(drawn):
            color = COLORS[index % len(COLORS)]
            roc.plot(m.roc.x, m.roc.y, color=color, lw=1.5, label=f"{m.classifier} (AUROC {_number(m.auroc)})")
            if m.fpr is not None and m.recall is not None:
                roc.plot([m.fpr], [m.recall], "o", color=color, ms=5)
            pr.plot(m.pr.x, m.pr.y, color=color, lw=1.5, label=f"{m.classifier} (AUPRC {_number(m.auprc)})")
        roc.plot([0, 1], [0, 1], **GUIDE)
        roc.set(xlabel="false-positive rate", ylabel="recall", title="ROC (dots: calibrated threshold)")
        pr.set(xlabel="recall", ylabel="precision", title="precision-recall", ylim=(0, 1.02))
        for ax in (roc, pr):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="lower right" if ax is roc else "lower left", frameon=False)
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]  # inline: no XML declaration or doctype
    return f'<figure class="plot">{svg}<figcaption>{_esc(title)}</figcaption></figure>'


def summary_table(metrics: Sequence[ClassifierMetrics]) -> str:
    """One row per classifier: the threshold-free figures, and those at its calibrated threshold."""
    headers = [
        "classifier", "items", "AUROC", "AUPRC", "recall @1% FPR", "recall @5% FPR", "threshold", "precision",
        "recall", "F1", "FPR", "near-neighbour FPR", "held-out wrapper recall",
    ]  # fmt: skip
    rows = [_summary_row(m) for m in metrics]
    return _table(headers, rows)


def _summary_row(m: ClassifierMetrics) -> list[str]:
    return [
        _esc(m.classifier), str(m.count), _number(m.auroc), _number(m.auprc), _percent(m.recall_at_1pct_fpr),
        _percent(m.recall_at_5pct_fpr), f"{m.threshold:.4g}", _percent(m.precision), _percent(m.recall),
        _number(m.f1), _percent(m.fpr), f"{_percent(m.near_neighbour_fpr)} ({m.near_neighbour_count})",
        _percent(m.held_out_recall),
    ]  # fmt: skip


def category_table(metrics: Sequence[ClassifierMetrics]) -> str:
    """One row per category, one column per classifier: the share flagged at its threshold, which is recall for a
    restricted category and the false-positive rate for a permitted one (or 'general')."""
    names = sorted({g.name for m in metrics for g in m.per_category})
    by_classifier = [{g.name: g for g in m.per_category} for m in metrics]
    rows = []
    for name in names:
        group = next(groups[name] for groups in by_classifier if name in groups)
        kind = "restricted: recall" if group.positives else "benign: FPR"
        cells = []
        for groups in by_classifier:
            g = groups.get(name)
            cells.append("–" if g is None else _percent(g.recall if g.positives else g.fpr))
        rows.append([_esc(name), kind, str(group.count), *cells])
    return _table(["category", "flagged share is", "items", *(m.classifier for m in metrics)], rows, text_columns=2)


def wrapper_table(metrics: Sequence[ClassifierMetrics]) -> str:
    """Recall on restricted items per jailbreak wrapper family; families held out of training are marked."""
    names = sorted({g.name for m in metrics for g in m.per_wrapper if g.positives})
    by_classifier = [{g.name: g for g in m.per_wrapper} for m in metrics]
    held = {g.name for m in metrics for g in m.per_wrapper if g.held_out}
    rows = [
        [
            _esc(name) + (" (held out)" if name in held else ""),
            *(_percent(groups[name].recall) if name in groups else "–" for groups in by_classifier),
        ]
        for name in names
    ]
    return _table(["wrapper", *(m.classifier for m in metrics)], rows)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int = 1) -> str:
    """Cells are HTML already; the columns after the first `text_columns` are numeric (right-aligned)."""

    def cell(tag: str, index: int, content: str) -> str:
        return f"<{tag}>{content}</{tag}>" if index < text_columns else f'<{tag} class="num">{content}</{tag}>'

    head = "".join(cell("th", i, _esc(h)) for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(cell("td", i, c) for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f'<table class="data"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
