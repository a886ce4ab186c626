"""The classifier evaluation: every classifier and baseline on every labelled set, at thresholds calibrated alike.

Each set is split by what its items hold: prompts alone are screened by the input classifier and the baselines
(the keyword filter, and policy-in-the-prompt with each judge model); prompt + answer items are scored token by
token by the streaming output classifier. The baselines' thresholds are calibrated exactly as the input
classifier's was (benign items of the synthetic calibration split, the same target false-positive rate), so every
row of a table is read at the same operating point. A wrapper family found in a set but never in training is
held out, and its recall is reported apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from constitutional.classifiers.config import ClassifiersConfig
from constitutional.classifiers.constitution import ClassifierConstitution
from constitutional.classifiers.metrics import ClassifierMetrics, StreamMetrics, classifier_metrics, stream_metrics
from constitutional.classifiers.records import ClassifierExample
from constitutional.classifiers.screening import InputClassifier
from constitutional.classifiers.thresholds import Threshold, calibrate_threshold
from constitutional.progress import progress_bar

if TYPE_CHECKING:
    from constitutional.classifiers.stream_model import StreamModel

SYNTHETIC_TEST = "synthetic test split"


class DatasetResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    held_out_wrappers: list[str] = Field(description="Wrapper families of this set never seen in training.")
    inputs: list[ClassifierMetrics] = Field(description="Each classifier on the set's prompt-only items.")
    stream: StreamMetrics | None = Field(description="The output classifier on the set's prompt + answer items.")


class BaselineThreshold(BaseModel):
    model_config = ConfigDict(extra="forbid")

    classifier: str
    threshold: Threshold


class ClassifierEvaluation(BaseModel):
    """Everything `cai clf eval` measured (its summary.json)."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    training_wrappers: list[str]
    baseline_thresholds: list[BaselineThreshold]
    datasets: list[DatasetResult]

    def headline(self) -> dict[str, float | None]:
        """The trained classifiers' main figures per set, for the manifest and the command's table."""
        found: dict[str, float | None] = {}
        for result in self.datasets:
            for m in result.inputs:
                if m.classifier == "input classifier":
                    found |= {f"{result.name}: input recall": m.recall, f"{result.name}: input FPR": m.fpr}
                    found[f"{result.name}: input AUROC"] = m.auroc
                    if result.held_out_wrappers:
                        found[f"{result.name}: input held-out recall"] = m.held_out_recall
            if result.stream is not None:
                found[f"{result.name}: output recall"] = result.stream.answers.recall
                found[f"{result.name}: output FPR"] = result.stream.answers.fpr
                found[f"{result.name}: output stopped before end"] = result.stream.stopped_before_end
        return found


def training_wrappers(examples: Sequence[ClassifierExample]) -> list[str]:
    return sorted({e.wrapper for e in examples if e.split == "train" and not e.contested})


def calibrate_baselines(
    baselines: Sequence, calibration: Sequence[ClassifierExample], target_fpr: float
) -> list[BaselineThreshold]:
    """Set each baseline's threshold on the benign prompts of the calibration split, as the input classifier's was."""
    benign = [e.messages for e in calibration if e.label == 0 and e.answer is None]
    found = []
    for baseline in baselines:
        threshold = calibrate_threshold([v.score for v in baseline.screen(benign)], target_fpr)
        baseline.threshold = threshold.value
        found.append(BaselineThreshold(classifier=baseline.name, threshold=threshold))
    return found


def _scored(classifier: InputClassifier, items: Sequence[ClassifierExample], chunk: int = 64) -> list[float]:
    scores: list[float] = []
    with progress_bar() as bar:
        task = bar.add_task(getattr(classifier, "name", "input classifier"), total=len(items), unit="items")
        for start in range(0, len(items), chunk):
            batch = items[start : start + chunk]
            scores += [v.score for v in classifier.screen([e.messages for e in batch])]
            bar.advance(task, len(batch))
    return scores


def evaluate_set(
    name: str,
    examples: Sequence[ClassifierExample],
    screens: Sequence[tuple[str, InputClassifier]],
    stream: StreamModel | None,
    wrappers_seen: Sequence[str],
    max_answer_tokens: int | None = None,
) -> DatasetResult:
    """The named input classifiers on the prompt-only items, the streaming classifier on the answered ones."""
    held_out = sorted({e.wrapper for e in examples} - set(wrappers_seen))
    prompts = [e for e in examples if e.answer is None]
    answered = [e for e in examples if e.answer is not None]
    inputs = []
    if prompts:
        for label, classifier in screens:
            scores = _scored(classifier, prompts)
            inputs.append(classifier_metrics(label, prompts, scores, classifier.threshold, held_out))
    streamed = None
    if answered and stream is not None:
        traces = stream.traces(answered, max_answer_tokens)
        streamed = stream_metrics("output classifier", answered, traces, stream.threshold, held_out)
    return DatasetResult(name=name, held_out_wrappers=held_out, inputs=inputs, stream=streamed)


def evaluate(
    examples: Sequence[ClassifierExample],
    datasets: dict[str, list[ClassifierExample]],
    config: ClassifiersConfig,
    constitution: ClassifierConstitution,
    input_dir: Path | None,
    output_dir: Path | None,
    load_model,
) -> ClassifierEvaluation:
    """Every classifier that exists (trained ones from their folders, the baselines the recipe names) on the
    synthetic test split and every labelled set. `examples` are the data stage's records."""
    from constitutional.classifiers.baselines import PolicyJudge, keyword_filter

    settings = config.eval
    baselines = [keyword_filter(constitution)] if settings.keyword_filter else []
    baselines += [PolicyJudge(load_model(spec), constitution) for spec in settings.policy_judges]
    calibration = [e for e in examples if e.split == "calibration" and not e.contested]
    thresholds = calibrate_baselines(baselines, calibration, config.input.target_fpr)
    screens: list[tuple[str, InputClassifier]] = [(b.name, b) for b in baselines]
    if input_dir is not None:
        from constitutional.classifiers.saved import load_input_classifier

        screens.insert(0, ("input classifier", load_input_classifier(input_dir)))
    stream = None
    if output_dir is not None:
        from constitutional.classifiers.saved import load_output_classifier

        stream = load_output_classifier(output_dir)
    sets = dict(datasets)
    if settings.synthetic_test:
        sets = {SYNTHETIC_TEST: [e for e in examples if e.split == "test" and not e.contested], **sets}
    seen = training_wrappers(examples)
    results = [
        evaluate_set(name, items[: settings.max_examples], screens, stream, seen, config.output.max_answer_tokens)
        for name, items in sets.items()
    ]
    return ClassifierEvaluation(training_wrappers=seen, baseline_thresholds=thresholds, datasets=results)
