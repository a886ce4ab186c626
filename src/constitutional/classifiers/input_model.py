"""The input classifier: an encoder (the embedded all-MiniLM-L6-v2 by default) fine-tuned with a classification head
to read a whole conversation and say whether it asks for restricted content, and which kind.

One softmax head over "permitted" and every restricted category the training data holds, rather than a binary head
beside a category head: the restricted score is 1 - P(permitted), the category is the most likely restricted class,
so score and category come from one distribution and can never disagree, and the category labels the data carries
anyway teach the encoder finer distinctions than a yes/no label alone. Training goes through transformers'
`Trainer` (resumable from its checkpoints, as the other training stages are); the threshold is then calibrated on the
benign examples of the calibration split to the target false-positive rate (`thresholds`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from constitutional.classifiers.metrics import ClassifierMetrics, classifier_metrics
from constitutional.classifiers.records import ClassifierExample
from constitutional.classifiers.screening import Verdict
from constitutional.classifiers.settings import InputClassifierSettings
from constitutional.classifiers.thresholds import Threshold, calibrate_threshold
from constitutional.errors import InputError
from constitutional.models.base import Message
from constitutional.models.sentence import MINILM_NAME

PERMITTED = "permitted"  # class 0 of the head: everything that is not restricted
_SPEAKERS = {"user": "User", "assistant": "Assistant", "system": "System"}


def conversation_text(messages: Sequence[Message]) -> str:
    """A conversation as the encoder reads it: one "Speaker: text" paragraph per message."""
    return "\n\n".join(f"{_SPEAKERS.get(m['role'], m['role'])}: {m['content'].strip()}" for m in messages)


def encode(tokenizer: Any, conversations: Sequence[Sequence[Message]], max_length: int) -> dict[str, list]:
    """Token ids of conversations; an over-long one keeps its end, where the request being screened is."""
    tokenizer.truncation_side = "left"
    return tokenizer(
        [conversation_text(c) for c in conversations], truncation=True, max_length=max_length, padding=False
    )


class InputModel:
    """A fine-tuned encoder behind the InputClassifier protocol."""

    def __init__(self, model: Any, tokenizer: Any, max_length: int, threshold: float, batch_size: int = 32):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.threshold = threshold
        self.batch_size = batch_size
        self.labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        # A fast tokenizer refuses ("Already borrowed") to be reconfigured while another thread encodes with it, and
        # the guard screens from a thread pool: encoding is cheap, so it is done one thread at a time.
        self._encoding = threading.Lock()

    def probabilities(self, conversations: Sequence[Sequence[Message]]) -> Any:
        """Softmax over [permitted, *restricted categories] per conversation, as a (conversations, classes) array."""
        import numpy as np
        import torch

        if not conversations:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        with self._encoding:
            encoded = encode(self.tokenizer, conversations, self.max_length)["input_ids"]
        out = np.zeros((len(encoded), len(self.labels)), dtype=np.float32)
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # little padding per batch
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                batch = self.tokenizer.pad({"input_ids": [encoded[i] for i in rows]}, return_tensors="pt")
                logits = self.model(**batch.to(self.model.device)).logits.float()
                out[rows] = torch.softmax(logits, dim=-1).cpu().numpy()
        return out

    def screen(self, conversations: Sequence[Sequence[Message]]) -> list[Verdict]:
        verdicts = []
        for row in self.probabilities(conversations):
            score = float(1.0 - row[0])
            flagged = score > self.threshold
            category = self.labels[1 + int(row[1:].argmax())] if flagged and len(row) > 1 else None
            verdicts.append(Verdict(score=score, flagged=flagged, category=category))
        return verdicts


class TrainingSummary(BaseModel):
    """What training saw and gave: written beside the model and into its card."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(description="input or output classifier")
    backbone: str
    train_examples: int
    train_restricted: int
    excluded_contested: int
    categories: list[str] = Field(description="Restricted categories seen in training.")
    wrappers: list[str] = Field(description="Wrapper families seen in training.")
    threshold: Threshold
    calibration: ClassifierMetrics | None = Field(description="The calibration split (both labels) at the threshold.")
    final_loss: float | None
    seconds: float
    settings: dict[str, Any]


@dataclass
class TrainedInput:
    classifier: InputModel
    summary: TrainingSummary


def training_split(examples: Sequence[ClassifierExample]) -> tuple[list, list, int]:
    """(train, calibration, contested excluded): contested examples are in neither, whatever their split."""
    train = [e for e in examples if e.split == "train" and not e.contested]
    calibration = [e for e in examples if e.split == "calibration" and not e.contested]
    contested = sum(e.contested and e.split in ("train", "calibration") for e in examples)
    if not any(e.label == 1 for e in train) or not any(e.label == 0 for e in train):
        raise InputError(
            "training needs restricted (label 1) and permitted (label 0) examples in the 'train' split",
            field="split",
            hint="generate data for both restricted and permitted categories",
        )
    if not any(e.label == 0 for e in calibration):
        raise InputError(
            "the threshold needs benign (label 0) examples in the 'calibration' split",
            field="split",
            hint="keep a share of the benign examples for calibration",
        )
    return train, calibration, contested


def resolve_backbone(name: str) -> str:
    """The folder of the encoder: the embedded MiniLM, or a local folder / cached Hugging Face model."""
    if name == MINILM_NAME:
        from constitutional.models.sentence import minilm_path

        return str(minilm_path())
    from constitutional.models import ModelSpec, check_folder
    from constitutional.models.embedded import resolve

    path = resolve(name)
    check_folder(path, ModelSpec(name=name), "backbone")
    return path


def train_input_classifier(
    examples: Sequence[ClassifierExample], settings: InputClassifierSettings, checkpoint_dir: Path
) -> TrainedInput:
    """Fine-tune the encoder on the train split, then calibrate its threshold on the calibration split.

    A run killed part-way resumes from the last checkpoint in `checkpoint_dir`; the caller saves the result
    (`saved.save_input_classifier`) and then removes the checkpoints.
    """
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer, TrainingArguments

    from constitutional.finetuning import TrainingOutputs, device_arguments, load_tokenizer, run_training

    started = time.perf_counter()
    train, calibration, contested = training_split(examples)
    categories = sorted({e.category for e in train if e.label == 1})
    labels = [PERMITTED, *categories]
    path = resolve_backbone(settings.backbone)
    tokenizer = load_tokenizer(path)
    model = AutoModelForSequenceClassification.from_pretrained(
        path,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        use_safetensors=True,
    )
    ids = encode(tokenizer, [e.messages for e in train], settings.max_length)["input_ids"]
    rows = [
        {"input_ids": i, "labels": labels.index(e.category) if e.label else 0} for i, e in zip(ids, train, strict=True)
    ]
    args = TrainingArguments(
        output_dir=str(checkpoint_dir),
        num_train_epochs=settings.epochs,
        per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        weight_decay=settings.weight_decay,
        warmup_steps=settings.warmup,
        save_strategy="steps",
        save_steps=settings.checkpoint_steps,
        save_total_limit=1,
        logging_steps=1,
        report_to="none",
        seed=settings.seed,
        **device_arguments(),
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=DataCollatorWithPadding(tokenizer))
    run_training(trainer, TrainingOutputs(model_dir=checkpoint_dir, checkpoint_dir=checkpoint_dir))
    classifier = InputModel(trainer.model, tokenizer, settings.max_length, threshold=0.5)
    scores = [v.score for v in classifier.screen([e.messages for e in calibration])]
    threshold = calibrate_threshold(
        [s for s, e in zip(scores, calibration, strict=True) if e.label == 0], settings.target_fpr
    )
    classifier.threshold = threshold.value
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    summary = TrainingSummary(
        kind="input",
        backbone=settings.backbone,
        train_examples=len(train),
        train_restricted=sum(e.label for e in train),
        excluded_contested=contested,
        categories=categories,
        wrappers=sorted({e.wrapper for e in train}),
        threshold=threshold,
        calibration=classifier_metrics("input classifier", calibration, scores, threshold.value),
        final_loss=losses[-1] if losses else None,
        seconds=time.perf_counter() - started,
        settings=settings.model_dump(),
    )
    return TrainedInput(classifier, summary)
