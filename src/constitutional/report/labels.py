"""The AI-feedback section: the rl_label stage's statistics and the preference model's held-out metrics.

Both come typed from the stages that measured them (`LabelStats`, `PMMetrics`); the report only draws them.
"""

from __future__ import annotations

from constitutional.records import Calibration, ComparisonRecord, LabelStats, PMMetrics
from constitutional.report.html import Section, esc, not_run, note, percent, stat, stats, table
from constitutional.report.inputs import ReportInputs
from constitutional.report.plots import draw_label_histogram, draw_order_agreement, draw_reliability, figure


def _label_cards(label_stats: LabelStats) -> str:
    cards = [
        stat(str(label_stats.labels), "labels"),
        stat("—" if label_stats.mean_p_a is None else f"{label_stats.mean_p_a:.2f}", "mean p_a"),
        stat(percent(label_stats.share_clamped), "labels clamped (CoT)"),
    ]
    if label_stats.position_flip_share is None:
        cards.append(stat("—", "position bias: labels were not scored in both orders"))
    else:
        cards += [
            stat(percent(label_stats.position_flip_share), "position bias: preference flips with the order"),
            stat(f"{label_stats.mean_order_gap:.2f}", "mean |p_a(a first) - p_a(a second)|; 0 = no bias"),
        ]
    return stats(*cards)


def _label_plots(label_stats: LabelStats | None, debiased: list[ComparisonRecord]) -> str:
    """The label histogram (from the stage's statistics) beside the per-order scatter (from the records)."""
    panels = []  # (draw, alt, caption)
    if label_stats is not None:
        histogram = label_stats.p_a_histogram
        panels.append(
            (lambda ax: draw_label_histogram(ax, histogram), "histogram of p_a", "Histogram: the soft labels.")
        )
    if debiased:
        caption = (
            "Scatter: one point per comparison scored in both orders; in the shaded quadrants the preferred answer "
            "flips when the order is swapped."
        )
        panels.append(
            (lambda ax: draw_order_agreement(ax, debiased), "agreement between presentation orders", caption)
        )
    if not panels:
        return ""
    draws, alts, captions = zip(*panels, strict=True)
    return figure(
        lambda *axes: [draw(ax) for draw, ax in zip(draws, axes, strict=True)],
        (4.2 * len(panels), 3.2),
        len(panels),
        " and ".join(alts),
        " ".join(captions),
    )


def _labels_body(inputs: ReportInputs) -> str:
    debiased = [c for c in inputs.comparisons if c.p_a_second is not None]
    if inputs.label_stats is None and not inputs.comparisons:
        return not_run(inputs, "comparisons", "AI feedback labels")
    if inputs.label_stats is None:
        command, _ = inputs.maker("comparisons")
        cards = note(
            f"{len(inputs.comparisons)} labels written so far; their statistics appear when "
            f"<code>{esc(command)}</code> completes."
        )
    else:
        cards = _label_cards(inputs.label_stats)
    return cards + _label_plots(inputs.label_stats, debiased)


def _pm_cards(metrics: PMMetrics) -> str:
    ece = "—" if metrics.calibration is None else f"{metrics.calibration.ece:.3f}"
    return stats(
        stat(percent(metrics.accuracy), f"held-out accuracy ({metrics.held_out_pairs} pairs)"),
        stat(ece, "ECE: |observed - predicted|, count-weighted over bins"),
        stat(
            str(metrics.train_pairs),
            f"training pairs ({metrics.train_red_team} red-team, {metrics.train_helpful} helpful)",
        ),
    )


def _by_kind(metrics: PMMetrics) -> str:
    rows = [[esc(kind), str(k.pairs), percent(k.accuracy)] for kind, k in sorted(metrics.by_kind.items())]
    return table(["held-out kind", "pairs", "accuracy"], rows, numeric={1, 2}, css="data narrow") if rows else ""


def _calibration(calibration: Calibration | None) -> str:
    if calibration is None or not calibration.bins:
        return note("No held-out pairs to calibrate on.")
    plot = figure(
        lambda ax: draw_reliability(ax, calibration),
        (4.2, 3.6),
        1,
        "reliability diagram of the preference model",
        "sigmoid(reward margin) against the held-out soft labels; marker size is the bin's share of pairs.",
    )
    rows = [
        [f"{b.low:.1f}–{b.high:.1f}", str(b.count), f"{b.predicted:.3f}", f"{b.observed:.3f}"]
        for b in calibration.bins
    ]
    bins = table(["bin", "pairs", "predicted", "observed"], rows, numeric={1, 2, 3})
    return f'<div class="grid"><div>{plot}</div><div>{bins}</div></div>'


def _pm_body(inputs: ReportInputs) -> str:
    metrics = inputs.pm_metrics
    if metrics is None:
        return not_run(inputs, "pm_metrics", "held-out accuracy and calibration of the preference model")
    return _pm_cards(metrics) + _by_kind(metrics) + _calibration(metrics.calibration)


def feedback_section(inputs: ReportInputs) -> Section:
    lead = "The feedback model's soft labels (rl_label) and how well the preference model trained on them predicts."
    body = f"<h3>Labels</h3>{_labels_body(inputs)}<h3>Preference model (held out)</h3>{_pm_body(inputs)}"
    ready = inputs.label_stats is not None or bool(inputs.comparisons) or inputs.pm_metrics is not None
    return Section("feedback", "AI feedback and calibration", lead, body, ready)
