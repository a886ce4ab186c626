"""The report's plots: matplotlib figures embedded as base64 PNGs, so the page needs no network to show them."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable

from constitutional.records import Calibration, ComparisonRecord, EloRow, EvalSummary, Interval
from constitutional.report.html import esc

KIND_COLORS = {"red_team": "#b45309", "helpful": "#0f766e"}
MODEL_COLORS = ["#2563eb", "#dc2626", "#059669", "#7c3aed", "#d97706", "#0891b2", "#db2777", "#4b5563"]
STYLE = {
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
GUIDE = {"ls": "--", "color": "#9aa5b1", "lw": 1}  # diagonals and reference lines


def figure(draw: Callable[..., None], size: tuple[float, float], panels: int, alt: str, caption: str) -> str:
    """A <figure> holding the PNG of `draw(*axes)` over `panels` side-by-side axes."""
    # Imported here: matplotlib takes a second to load and only pages with plots need it.
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=size, layout="constrained")
        draw(*fig.subplots(1, panels, squeeze=False)[0])
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=150, facecolor="white")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (
        f'<figure class="plot"><img src="data:image/png;base64,{data}" alt="{esc(alt)}">'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
    )


def model_colors(summary: EvalSummary) -> dict[str, str]:
    """One colour per model, the same in every plot."""
    names = list(dict.fromkeys(row.model for rows in summary.elo.values() for row in rows))
    return {name: MODEL_COLORS[i % len(MODEL_COLORS)] for i, name in enumerate(names)}


def _error(iv: Interval) -> list[list[float]]:
    return [[iv.value - iv.low], [iv.high - iv.value]]


def draw_elo(ax, criterion: str, rows: list[EloRow], colors: dict[str, str]) -> None:
    rows = sorted(rows, key=lambda r: r.elo.value)
    for y, row in enumerate(rows):
        ax.errorbar(row.elo.value, y, xerr=_error(row.elo), fmt="o", color=colors[row.model], capsize=4, ms=6)
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


def pareto_front(points: dict[str, tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both axes, ordered by x."""
    front = [p for p in points.values() if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in points.values())]
    return sorted(front)


def draw_pareto(ax, helpful: dict[str, EloRow], harmless: dict[str, EloRow], colors: dict[str, str]) -> None:
    models = [m for m in helpful if m in harmless]
    for model in models:
        x, y = helpful[model].elo, harmless[model].elo
        ax.errorbar(x.value, y.value, xerr=_error(x), yerr=_error(y), fmt="o", ms=8, capsize=3, color=colors[model])
        ax.annotate(
            model,
            (x.value, y.value),
            xytext=(9, 8),
            textcoords="offset points",
            fontsize=9,
            color=colors[model],
            weight="bold",
        )
    front = pareto_front({m: (helpful[m].elo.value, harmless[m].elo.value) for m in models})
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
        ax.plot(*zip(*front, strict=True), **GUIDE, zorder=0)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("helpfulness Elo  →")
    ax.set_ylabel("harmlessness Elo  →")
    ax.margins(0.2)


def draw_curve(ax, revisions: list[int], points: list[Interval], title: str, ylabel: str, color: str) -> None:
    ax.fill_between(revisions, [p.low for p in points], [p.high for p in points], color=color, alpha=0.15, lw=0)
    ax.plot(revisions, [p.value for p in points], "o-", color=color, ms=5)
    ax.set_xticks(revisions)
    ax.set_xlabel("revision (0 = initial answer)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)


def draw_label_histogram(ax, counts: list[int]) -> None:
    """The rl_label stage's histogram of P(a better): len(counts) equal bins over [0, 1]."""
    from matplotlib.ticker import MaxNLocator

    width = 1 / len(counts)
    ax.bar(
        [i * width for i in range(len(counts))], counts, width=width, align="edge", color="#2563eb", edgecolor="white"
    )
    ax.bar_label(ax.containers[0], labels=[str(c) if c else "" for c in counts], fontsize=7, color="#52606d")
    ax.set_xlim(0, 1)
    ax.set_xlabel("p_a = P(answer a is better)")
    ax.set_ylabel("labels")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("label distribution")


def draw_order_agreement(ax, debiased: list[ComparisonRecord]) -> None:
    # Shaded: the quadrants where the preferred answer changes with the presentation order.
    ax.axhspan(0.5, 1, xmin=0, xmax=0.5, color="#fee2e2", lw=0)
    ax.axhspan(0, 0.5, xmin=0.5, xmax=1, color="#fee2e2", lw=0)
    ax.plot([0, 1], [0, 1], **GUIDE)
    for kind in sorted({c.kind for c in debiased}):
        points = [c for c in debiased if c.kind == kind]
        xs, ys = [c.p_a_first for c in points], [c.p_a_second for c in points]
        ax.scatter(xs, ys, s=14, alpha=0.7, color=KIND_COLORS[kind], label=kind)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("P(a better), a shown first")
    ax.set_ylabel("P(a better), a shown second")
    ax.set_title("presentation-order agreement")


def draw_reliability(ax, calibration: Calibration) -> None:
    """Bars span each bin at its observed frequency; dots sit at the bin's mean prediction, sized by its count."""
    bins = calibration.bins
    largest = max(b.count for b in bins)
    ax.plot([0, 1], [0, 1], **GUIDE, label="perfect calibration")
    ax.bar(
        [b.low for b in bins],
        [b.observed for b in bins],
        width=[b.high - b.low for b in bins],
        align="edge",
        color="#bfdbfe",
        edgecolor="white",
        label="observed, per bin",
    )
    ax.scatter(
        [b.predicted for b in bins],
        [b.observed for b in bins],
        s=[20 + 180 * b.count / largest for b in bins],
        color="#2563eb",
        zorder=3,
        label="mean prediction",
    )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed frequency")
    ax.set_title(f"preference model reliability (ECE {calibration.ece:.3f})")
    ax.legend(fontsize=8, loc="upper left", markerscale=0.5)
