"""The classifier evaluation as one self-contained HTML page: per labelled set, the summary table, ROC and PR curves,
the per-category and per-wrapper tables (drawn by `curves`), and the streaming classifier's detection latency."""

from __future__ import annotations

import html
from importlib import resources
from pathlib import Path

from constitutional.classifiers import curves
from constitutional.classifiers.evaluation import ClassifierEvaluation, DatasetResult
from constitutional.classifiers.metrics import Distribution, StreamMetrics

_CSS = resources.files("constitutional") / "data" / "report" / "report.css"


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _tokens(distribution: Distribution) -> str:
    if not distribution.count:
        return "–"
    return f"median {distribution.median:.0f}, mean {distribution.mean:.1f}, p90 {distribution.p90:.0f}"


def _latency(stream: StreamMetrics) -> str:
    share = "–" if stream.stopped_before_end is None else f"{stream.stopped_before_end:.1%}"
    rows = [
        ("tokens from the answer's start to the flag", _tokens(stream.tokens_to_flag)),
        ("tokens from where the harm starts to the flag", _tokens(stream.tokens_after_harmful_start)),
        ("harmful answers flagged before their harm began", str(stream.flagged_before_harmful_start)),
        ("harmful answers stopped before their end", share),
    ]
    body = "".join(f"<tr><td>{_esc(k)}</td><td>{_esc(v)}</td></tr>" for k, v in rows)
    return f'<table class="data"><tbody>{body}</tbody></table>'


def _dataset(result: DatasetResult) -> str:
    parts = [f"<h2>{_esc(result.name)}</h2>"]
    if result.held_out_wrappers:
        parts.append(f"<p>Wrapper families held out of training: {_esc(', '.join(result.held_out_wrappers))}.</p>")
    if result.inputs:
        parts += [
            "<h3>Prompts: input classifier and baselines</h3>",
            curves.summary_table(result.inputs),
            curves.curves_figure(result.inputs, f"{result.name}: prompts"),
            "<h4>Per category</h4>",
            curves.category_table(result.inputs),
        ]
        if any(g.positives for m in result.inputs for g in m.per_wrapper if g.name != "plain"):
            parts += ["<h4>Per jailbreak wrapper</h4>", curves.wrapper_table(result.inputs)]
    if result.stream is not None:
        answers = [result.stream.answers]
        parts += [
            "<h3>Answers: streaming output classifier (score = running maximum over the answer)</h3>",
            curves.summary_table(answers),
            curves.curves_figure(answers, f"{result.name}: answers"),
            "<h4>Detection latency</h4>",
            _latency(result.stream),
            "<h4>Per category</h4>",
            curves.category_table(answers),
        ]
    return f'<section class="card">{"".join(parts)}</section>'


def render(evaluation: ClassifierEvaluation, title: str) -> str:
    thresholds = "".join(
        f"<li>{_esc(b.classifier)}: {b.threshold.value:.4g} (benign calibration FPR {b.threshold.achieved_fpr:.1%} "
        f"on {b.threshold.benign_count} items)</li>"
        for b in evaluation.baseline_thresholds
    )
    intro = (
        "<p>Precision, recall, F1 and false-positive rates are at each classifier's calibrated threshold (baselines "
        "calibrated like the input classifier, on the synthetic calibration split's benign prompts); AUROC, AUPRC "
        "and recall at a fixed FPR read the scores alone. Near-neighbour FPR counts benign items of permitted "
        f"categories. Wrappers seen in training: {_esc(', '.join(evaluation.training_wrappers))}.</p>"
        + (f"<ul>{thresholds}</ul>" if thresholds else "")
    )
    sections = "".join(_dataset(result) for result in evaluation.datasets)
    css = _CSS.read_text(encoding="utf-8")
    return (
        f'<!doctype html>\n<html lang="en">\n<head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f"<style>{css}</style></head>\n<body>"
        f'<header class="top"><h1>{_esc(title)}</h1></header>'
        f'<main><section class="card">{intro}</section>{sections}</main></body></html>\n'
    )


def write_page(evaluation: ClassifierEvaluation, path: Path, title: str = "Constitutional classifiers") -> Path:
    path.write_text(render(evaluation, title), encoding="utf-8")
    return path
