"""The two training stages' work: choose the examples each classifier reads, train it, save it, and say what
happened. The training itself is `input_model` / `stream_model`; saving is `saved`."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from constitutional.classifiers.config import ClassifiersConfig
from constitutional.classifiers.records import ClassifierExample


def training_examples(
    examples: Sequence[ClassifierExample], answers: bool, train_on_contested: bool
) -> list[ClassifierExample]:
    """The prompt-only examples (input classifier) or the prompt + answer ones (output classifier). Contested
    examples stay contested, so training leaves them out, unless the recipe asks to train on them too."""
    chosen = [e for e in examples if (e.answer is not None) == answers]
    if train_on_contested:
        chosen = [e.model_copy(update={"contested": False}) if e.contested else e for e in chosen]
    return chosen


def _summary(summary) -> dict[str, Any]:
    calibration = summary.calibration
    return {
        "train_examples": summary.train_examples,
        "train_restricted": summary.train_restricted,
        "excluded_contested": summary.excluded_contested,
        "threshold": summary.threshold.value,
        "calibration_benign": summary.threshold.benign_count,
        "calibration_fpr": summary.threshold.achieved_fpr,
        "calibration_recall": calibration.recall if calibration else None,
        "final_loss": summary.final_loss,
    }


def train_input(
    examples: Sequence[ClassifierExample], config: ClassifiersConfig, checkpoint_dir: Path, model_dir: Path
) -> dict[str, Any]:
    """Fine-tune and calibrate the input classifier, save it to `model_dir`; resumes from `checkpoint_dir`."""
    from constitutional.classifiers.input_model import train_input_classifier
    from constitutional.classifiers.saved import save_input_classifier

    chosen = training_examples(examples, answers=False, train_on_contested=config.train_on_contested)
    trained = train_input_classifier(chosen, config.input, checkpoint_dir)
    save_input_classifier(trained, model_dir)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)  # the saved model supersedes them
    return _summary(trained.summary)


def train_output(examples: Sequence[ClassifierExample], config: ClassifiersConfig, model_dir: Path) -> dict[str, Any]:
    """Train and calibrate the streaming output classifier's head, save it to `model_dir`."""
    from constitutional.classifiers.saved import save_output_classifier
    from constitutional.classifiers.stream_training import train_stream_classifier

    chosen = training_examples(examples, answers=True, train_on_contested=config.train_on_contested)
    trained = train_stream_classifier(chosen, config.output)
    save_output_classifier(trained, model_dir)
    return _summary(trained.summary)
