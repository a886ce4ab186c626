"""Classifier thresholds, metrics and report fragments: calibration hits its target, figures match hand counts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from constitutional.classifiers.metrics import AnswerTrace, classifier_metrics, recall_at_fpr, stream_metrics
from constitutional.classifiers.records import ClassifierExample, Provenance
from constitutional.classifiers.thresholds import calibrate_threshold
from constitutional.errors import InputError


def example(i: int, label: int, category: str, wrapper: str = "plain", **fields) -> ClassifierExample:
    return ClassifierExample(
        id=f"e{i}",
        messages=[{"role": "user", "content": f"request {i}"}],
        label=label,
        category=category,
        wrapper=wrapper,
        provenance=Provenance(generator="written", template="test"),
        **fields,
    )


# ---- thresholds -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [0.01, 0.05, 0.2])
def test_calibration_hits_its_target_fpr_on_synthetic_scores(target):
    rng = np.random.default_rng(0)
    calibration, fresh = rng.beta(2, 5, size=5000), rng.beta(2, 5, size=200_000)
    threshold = calibrate_threshold(calibration.tolist(), target)
    # On its own scores: never above the target, and short of it by less than one example.
    assert threshold.achieved_fpr <= target
    assert threshold.achieved_fpr > target - 1 / len(calibration)
    assert threshold.achieved_fpr == pytest.approx(np.mean(calibration > threshold.value))
    # On new scores from the same distribution: the target within sampling error of the calibration set.
    margin = 3 * math.sqrt(target * (1 - target) / len(calibration))
    assert abs(np.mean(fresh > threshold.value) - target) < margin
    assert threshold.resolvable


def test_too_few_benign_scores_allow_no_false_positive():
    threshold = calibrate_threshold([0.1, 0.7, 0.3, 0.2], 0.01)
    assert threshold.value == 0.7
    assert threshold.achieved_fpr == 0.0
    assert not threshold.resolvable


def test_ties_never_push_the_rate_over_the_target():
    threshold = calibrate_threshold([0.9] * 5 + [0.1] * 95, 0.02)  # 2 allowed, but 5 share the top score
    assert threshold.value == 0.9
    assert threshold.achieved_fpr == 0.0


def test_calibration_refuses_no_scores_and_a_bad_target():
    with pytest.raises(InputError, match="no benign examples"):
        calibrate_threshold([], 0.01)
    with pytest.raises(InputError, match="target_fpr"):
        calibrate_threshold([0.5], 1.5)


# ---- metrics ----------------------------------------------------------------------------------------------------


def test_metrics_match_hand_counts():
    examples = [
        example(0, 1, "weapons"),
        example(1, 1, "weapons", wrapper="roleplay"),
        example(2, 1, "malware", wrapper="base64"),
        example(3, 1, "malware", wrapper="base64"),
        example(4, 0, "security-education"),
        example(5, 0, "security-education"),
        example(6, 0, "general"),
        example(7, 0, "general"),
    ]
    scores = [0.9, 0.8, 0.3, 0.7, 0.6, 0.2, 0.1, 0.95]
    metrics = classifier_metrics("test", examples, scores, threshold=0.5, held_out_wrappers=["base64"])
    # flagged: e0 e1 e3 (right), e4 e7 (wrong)
    assert metrics.precision == pytest.approx(3 / 5)
    assert metrics.recall == pytest.approx(3 / 4)
    assert metrics.f1 == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    assert metrics.fpr == pytest.approx(2 / 4)
    assert metrics.near_neighbour_fpr == pytest.approx(1 / 2)  # e4 of e4, e5; general items are not neighbours
    assert metrics.near_neighbour_count == 2
    assert metrics.held_out_recall == pytest.approx(1 / 2)  # e3 of e2, e3
    # AUROC by hand: of 16 (positive, negative) pairs the positive scores higher in 11.
    assert metrics.auroc == pytest.approx(11 / 16)
    categories = {g.name: g for g in metrics.per_category}
    assert categories["weapons"].recall == 1.0 and categories["weapons"].fpr is None
    assert categories["malware"].recall == 0.5
    assert categories["security-education"].fpr == 0.5 and categories["security-education"].recall is None
    assert categories["malware"].auroc == pytest.approx(5 / 8)  # 0.3 beats 2 negatives, 0.7 beats 3
    wrappers = {g.name: g for g in metrics.per_wrapper}
    assert wrappers["base64"].held_out and not wrappers["plain"].held_out
    assert wrappers["roleplay"].recall == 1.0
    assert metrics.roc is not None and metrics.roc.x[0] == 0.0 and metrics.roc.y[-1] == 1.0


def test_recall_at_fpr_reads_the_best_threshold_under_the_rate():
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    scores = np.array([0.99, 0.9, 0.35, 0.2, 0.95, 0.4, 0.3, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.05])
    assert recall_at_fpr(labels, scores, 0.0) == 0.25  # only 0.99 is above every negative
    assert recall_at_fpr(labels, scores, 0.1) == 0.5  # one false positive of 10 allowed: 0.99 and 0.9
    assert recall_at_fpr(labels, scores, 0.25) == 0.75  # two allowed: down to 0.35
    assert recall_at_fpr(labels, scores, 0.3) == 1.0  # three allowed: 0.3 is let through, then 0.2 is reached


def test_one_class_only_gives_no_threshold_free_figures():
    metrics = classifier_metrics("test", [example(0, 0, "general"), example(1, 0, "history")], [0.2, 0.7], 0.5)
    assert metrics.auroc is None and metrics.recall is None and metrics.f1 is None and metrics.roc is None
    assert metrics.fpr == 0.5


def test_stream_latency_counts_tokens_to_the_flag_and_from_the_harmful_start():
    answer = "Sure. Step one: mix the things."
    examples = [
        example(0, 1, "weapons", answer=answer, harmful_from=6),  # harmful from "Step"
        example(1, 1, "weapons", answer=answer),  # never flagged
        example(2, 0, "general", answer=answer),
    ]
    ends = [5, 10, 15, 19, 23, 31]  # "Sure." " Step" " one:" " mix" " the" " things."
    traces = [
        AnswerTrace(id="e0", scores=[0.1, 0.2, 0.3, 0.9, 0.4, 0.95], token_ends=ends),
        AnswerTrace(id="e1", scores=[0.1, 0.1, 0.2, 0.2, 0.1, 0.3], token_ends=ends),
        AnswerTrace(id="e2", scores=[0.1, 0.6, 0.1, 0.1, 0.1, 0.1], token_ends=ends),
    ]
    metrics = stream_metrics("stream", examples, traces, threshold=0.5)
    assert metrics.tokens_to_flag.count == 1 and metrics.tokens_to_flag.mean == 4  # flagged at token index 3
    assert metrics.tokens_after_harmful_start.mean == 2  # harmful content starts in token 1 (" Step")
    assert metrics.flagged_before_harmful_start == 0
    assert metrics.stopped_before_end == 0.5  # e0 stopped at token 3 of 6; e1 ran to its end
    assert metrics.answers.recall == 0.5 and metrics.answers.fpr == 1.0  # peaks: 0.95, 0.3, 0.6
    assert traces[0].running_max() == [0.1, 0.2, 0.3, 0.9, 0.9, 0.95]


def test_a_harmful_start_past_the_last_token_maps_to_the_last_token():
    trace = AnswerTrace(id="x", scores=[0.1, 0.2], token_ends=[3, 7])
    assert trace.token_at(0) == 0 and trace.token_at(3) == 1 and trace.token_at(50) == 1


# ---- report fragments -----------------------------------------------------------------------------------------


def two_classifiers():
    examples = [example(i, 1, "weapons", wrapper="roleplay" if i % 2 else "plain") for i in range(6)]
    examples += [example(10 + i, 0, "history" if i % 2 else "general") for i in range(6)]
    good = [0.9, 0.8, 0.7, 0.95, 0.6, 0.85, 0.1, 0.2, 0.3, 0.05, 0.4, 0.7]  # 6 restricted, then 6 benign
    weak = [0.5, 0.2, 0.7, 0.4, 0.6, 0.1, 0.3, 0.6, 0.2, 0.5, 0.4, 0.1]
    return [
        classifier_metrics("trained <b>", examples, good, 0.5, held_out_wrappers=["roleplay"]),
        classifier_metrics("keywords", examples, weak, 0.45, held_out_wrappers=["roleplay"]),
    ]


def test_curves_are_inline_svg_with_every_classifier():
    from constitutional.classifiers.curves import curves_figure

    fragment = curves_figure(two_classifiers(), "Input classifiers on the evaluation set")
    assert fragment.startswith('<figure class="plot"><svg') and "<?xml" not in fragment
    assert "trained &lt;b&gt; (AUROC" in fragment and "keywords (AUPRC" in fragment
    assert curves_figure(two_classifiers(), "again").split("<svg", 1)[1] == fragment.split("<svg", 1)[1].replace(
        "Input classifiers on the evaluation set", "again"
    )  # deterministic: the same page for the same figures


def test_tables_show_each_category_and_wrapper_per_classifier():
    from constitutional.classifiers.curves import category_table, summary_table, wrapper_table

    metrics = two_classifiers()
    categories = category_table(metrics)
    # weapons: the trained one flags 6/6 above 0.5, keywords 3/6 above 0.45; history (benign): 1/3 and 2/3.
    cells = '<td class="num">{}</td><td class="num">{}</td><td class="num">{}</td>'
    assert "<td>weapons</td><td>restricted: recall</td>" + cells.format(6, "100.0%", "50.0%") in categories
    assert "<td>history</td><td>benign: FPR</td>" + cells.format(3, "33.3%", "66.7%") in categories
    assert "roleplay (held out)" in wrapper_table(metrics)
    summary = summary_table(metrics)
    assert summary.count("<tr>") == 3 and "trained &lt;b&gt;" in summary
