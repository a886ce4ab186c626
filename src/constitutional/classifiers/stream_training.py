"""Training the streaming output classifier: every answer read once through the frozen backbone, the value head fit
on the cached hidden states with a loss on each token and on the running maximum the stream acts on, and the
threshold calibrated on benign answers' peak scores."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from constitutional.classifiers.input_model import TrainingSummary, training_split
from constitutional.classifiers.metrics import stream_metrics
from constitutional.classifiers.records import ClassifierExample
from constitutional.classifiers.settings import StreamClassifierSettings
from constitutional.classifiers.stream_model import StreamModel, ValueHead, answer_text
from constitutional.classifiers.thresholds import calibrate_threshold
from constitutional.errors import InputError
from constitutional.models.hf import TransformersModel
from constitutional.progress import progress_bar


def stream_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, cummax_weight: float) -> torch.Tensor:
    """(1 - w) * per-token BCE + w * BCE of the running maximum, averaged over real tokens; all (answers, tokens).

    The running maximum is what the stream acts on (a flagged answer stays flagged), so its term punishes a single
    early spike on a benign answer as much as a sustained one; the per-token term keeps every position learning.
    """
    import torch.nn.functional as F

    running = torch.cummax(logits, dim=1).values  # sigmoid is monotone: the max of logits is the max of scores
    per_token = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    cumulative = F.binary_cross_entropy_with_logits(running, targets, reduction="none")
    mixed = (1 - cummax_weight) * per_token + cummax_weight * cumulative
    return (mixed * mask).sum() / mask.sum()


def token_targets(example: ClassifierExample, token_ends: Sequence[int]) -> list[float]:
    """What each answer token should predict: 0 throughout a benign answer; for a harmful one, 1 from the token where
    harmful content starts (`harmful_from`), or from its first token when that is not known."""
    if example.label == 0:
        return [0.0] * len(token_ends)
    start = example.harmful_from or 0
    return [1.0 if end > start else 0.0 for end in token_ends]


# ---- training ----------------------------------------------------------------------------------------------------


@dataclass
class TrainedStream:
    classifier: StreamModel
    summary: TrainingSummary


def load_backbone(settings: StreamClassifierSettings) -> TransformersModel:
    from constitutional.models import ModelSpec, load_model

    model = load_model(ModelSpec(name=settings.backbone, dtype=settings.dtype))
    if not isinstance(model, TransformersModel):
        raise InputError("the output classifier needs a transformers backbone", field="backbone")
    return model


def _fit_head(head: ValueHead, features: list[torch.Tensor], targets: list[list[float]], settings) -> list[float]:
    """Adam on the head alone over cached features; returns the mean loss of each epoch."""
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = torch.optim.AdamW(head.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    usable = [i for i, f in enumerate(features) if len(f)]
    losses = []
    head.train()
    for _ in range(settings.epochs):
        order = [usable[i] for i in torch.randperm(len(usable), generator=generator).tolist()]
        total = 0.0
        for start in range(0, len(order), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            padded = nn.utils.rnn.pad_sequence([features[i] for i in batch], batch_first=True)
            target = nn.utils.rnn.pad_sequence([torch.tensor(targets[i]) for i in batch], batch_first=True)
            mask = nn.utils.rnn.pad_sequence([torch.ones(len(features[i])) for i in batch], batch_first=True)
            # Padding sits after each answer, so it never enters the running maximum of a real token.
            loss = stream_loss(head(padded), target, mask, settings.cummax_weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        losses.append(total / max(1, len(order)))
    head.eval()
    return losses


def train_stream_classifier(
    examples: Sequence[ClassifierExample],
    settings: StreamClassifierSettings,
    backbone: TransformersModel | None = None,
) -> TrainedStream:
    """Read every answer through the frozen backbone once, fit the head on the cached hidden states, then calibrate
    the threshold on the benign answers of the calibration split (their peak score, as the stream would act on it).

    `backbone` reuses an already loaded model (the policy); by default `settings.backbone` is loaded.
    """
    started = time.perf_counter()
    train, calibration, contested = training_split(examples)
    lm = backbone or load_backbone(settings)
    torch.manual_seed(settings.seed)
    width = lm.model.config.hidden_size
    classifier = StreamModel(lm, ValueHead(width, settings.head_hidden), settings.layer, threshold=0.5)
    tokens = [classifier.answer_tokens(answer_text(e)) for e in train]
    tokens = [(ids[: settings.max_answer_tokens], ends[: settings.max_answer_tokens]) for ids, ends in tokens]
    pairs = [(classifier.prefix_ids(e.messages), ids) for e, (ids, _) in zip(train, tokens, strict=True)]
    features = []
    with progress_bar() as bar:
        task = bar.add_task("reading answers", total=len(pairs), unit="answers")
        for start in range(0, len(pairs), lm.batch_size):
            # Kept in bf16 until the head reads them: half the memory of float32, far finer than the head needs.
            features += [f.bfloat16() for f in classifier.features(pairs[start : start + lm.batch_size])]
            bar.advance(task, len(pairs[start : start + lm.batch_size]))
    targets = [token_targets(e, ends) for e, (_, ends) in zip(train, tokens, strict=True)]
    losses = _fit_head(classifier.head, features, targets, settings)
    traces = classifier.traces(calibration, settings.max_answer_tokens)
    benign = [max(t.scores, default=0.0) for t, e in zip(traces, calibration, strict=True) if e.label == 0]
    threshold = calibrate_threshold(benign, settings.target_fpr)
    classifier.threshold = threshold.value
    summary = TrainingSummary(
        kind="output",
        backbone=settings.backbone if backbone is None else backbone.name,
        train_examples=len(train),
        train_restricted=sum(e.label for e in train),
        excluded_contested=contested,
        categories=sorted({e.category for e in train if e.label == 1}),
        wrappers=sorted({e.wrapper for e in train}),
        threshold=threshold,
        calibration=stream_metrics("output classifier", calibration, traces, threshold.value).answers,
        final_loss=losses[-1],
        seconds=time.perf_counter() - started,
        settings=settings.model_dump(),
    )
    return TrainedStream(classifier, summary)
