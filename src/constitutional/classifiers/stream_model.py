"""The streaming output classifier: a value head on a frozen causal LM's hidden states that predicts, at every token
of an answer, whether the answer is harmful, and stops generation once its running maximum crosses the threshold.

Why a frozen backbone and a small head: when the backbone is the model generating the answer, the hidden states the
head reads are computed by the generation anyway, so attached to it (`classifiers.attached`) the classifier costs
one head per token, not a second forward pass; the guard in front of another model runs the same head on the
backbone's own incremental forward instead (`StreamModel.start`). The head reads the output of one decoder layer,
read by a forward hook in every mode (training, scoring, generation), so all modes see the same features.

Attached to generation the flag comes one token late: a token's hidden state is computed when the model reads it to
predict the next one, so the score of token t is known once token t + 1 has been sampled (and the last token of an
answer is never scored there).
"""

from __future__ import annotations

import hashlib
import threading
import time
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import torch
from torch import nn

from constitutional.classifiers.input_model import TrainingSummary, training_split
from constitutional.classifiers.metrics import AnswerTrace, stream_metrics
from constitutional.classifiers.records import ClassifierExample
from constitutional.classifiers.screening import Verdict
from constitutional.classifiers.settings import StreamClassifierSettings
from constitutional.classifiers.thresholds import calibrate_threshold
from constitutional.errors import InputError
from constitutional.models.base import Message
from constitutional.models.hf import TransformersModel
from constitutional.models.prefix import shared_length
from constitutional.progress import progress_bar

# ---- the head and its loss -------------------------------------------------------------------------------------


class ValueHead(nn.Module):
    """Hidden state -> logit that the whole answer is harmful. The LayerNorm makes any layer's scale alike."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.net = nn.Linear(width, 1) if hidden == 0 else nn.Sequential(
            nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, 1)
        )  # fmt: skip

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(self.norm(features.float())).squeeze(-1)


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


# ---- reading hidden states -------------------------------------------------------------------------------------


def decoder_layers(model: Any) -> nn.ModuleList:
    layers = getattr(model.get_decoder(), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise InputError(
            f"cannot find the decoder layers of {type(model).__name__}",
            field="backbone",
            hint="use a decoder-only model whose decoder keeps its blocks in `.layers` (Llama, Qwen, Gemma, ...)",
        )
    return layers


def feature_module_index(layers: nn.ModuleList, layer: int) -> int:
    if not -len(layers) <= layer < len(layers):
        raise InputError(f"layer {layer} does not exist: the backbone has {len(layers)} layers", field="layer")
    return layer % len(layers)


def feature_module(model: Any, layer: int) -> nn.Module:
    layers = decoder_layers(model)
    return layers[feature_module_index(layers, layer)]


def drop_layers_after(model: Any, layer: int) -> None:
    """Remove the decoder layers after `layer` from a backbone only the head reads (the guard's own): they never
    reach the head, so scoring then costs (layer + 1) / n of a full forward, and their weights free memory."""
    layers = decoder_layers(model)
    keep = feature_module_index(layers, layer) + 1
    del layers[keep:]
    config = model.get_decoder().config  # the decoder runs `layers[: config.num_hidden_layers]`; caches size by it
    config.num_hidden_layers = keep
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:keep]


def backbone_fingerprint(model: Any, layer: int) -> str:
    """A hash of the feature layer's weights (in bf16, so any precision they load in agrees), telling whether a
    model is the backbone a head was trained on."""
    digest = hashlib.sha256()
    for name, tensor in sorted(feature_module(model, layer).state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to(torch.bfloat16).view(torch.int16).cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


@contextmanager
def captured(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """The outputs of `module` in forward passes this thread runs while the block is open, newest last (only the
    newest is kept). Passes other threads run on the same model (the guard scores streams in a thread pool) are not
    seen, so concurrent scorers never read each other's states."""
    seen: list[torch.Tensor] = []
    owner = threading.get_ident()

    def hook(_module, _inputs, output):
        if threading.get_ident() == owner:
            seen[:] = [output[0] if isinstance(output, tuple) else output]

    handle = module.register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


# ---- the classifier ----------------------------------------------------------------------------------------------


class StreamModel:
    """A value head on a frozen backbone, behind the OutputClassifier protocol."""

    def __init__(self, backbone: TransformersModel, head: ValueHead, layer: int, threshold: float):
        self.lm = backbone
        self.head = head.eval()
        self.layer = layer
        self.threshold = threshold
        self.module = feature_module(backbone.model, layer)
        self.fingerprint = backbone_fingerprint(backbone.model, layer)
        self._encoding = threading.Lock()  # one thread at a time in the fast tokenizer (see InputModel)

    # rendering: the prompt exactly as the transformers backend renders it for generation
    def prefix_ids(self, conversation: Sequence[Message]) -> list[int]:
        with self._encoding:
            return self.lm.render(list(conversation))

    def answer_tokens(self, answer: str) -> tuple[list[int], list[int]]:
        """(token ids, character offset where each ends) of an answer; special-token strings read as text."""
        with self._encoding:
            encoded = self.lm.tokenizer(
                answer, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True
            )
        return encoded["input_ids"], [end for _, end in encoded["offset_mapping"]]

    @torch.inference_mode()
    def features(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[torch.Tensor]:
        """Per (prefix ids, answer ids), the feature-layer output at every answer token: (answer tokens, width).

        Sequences are batched right-padded (causal attention never looks at later padding), similar lengths together.
        """
        out: list[torch.Tensor] = [torch.empty(0)] * len(pairs)
        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
        pad = self.lm.tokenizer.pad_token_id
        device = self.lm.model.device
        for start in range(0, len(order), self.lm.batch_size):
            rows = order[start : start + self.lm.batch_size]
            sequences = [pairs[i][0] + pairs[i][1] for i in rows]
            width = max(len(s) for s in sequences)
            ids = torch.tensor([s + [pad] * (width - len(s)) for s in sequences], device=device)
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences], device=device)
            with captured(self.module) as seen:
                self.lm.model.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False)
            for row, i in enumerate(rows):
                prefix, answer = pairs[i]
                out[i] = seen[0][row, len(prefix) : len(prefix) + len(answer)].float().cpu()
        return out

    @torch.inference_mode()
    def token_scores(self, features: torch.Tensor) -> list[float]:
        return torch.sigmoid(self.head(features)).tolist() if len(features) else []

    def traces(self, examples: Sequence[ClassifierExample], max_tokens: int | None = None) -> list[AnswerTrace]:
        """Every answer scored in one pass each (full re-scoring, batched): the per-token scores metrics read."""
        tokens = [self.answer_tokens(_answer(e)) for e in examples]
        if max_tokens is not None:
            tokens = [(ids[:max_tokens], ends[:max_tokens]) for ids, ends in tokens]
        pairs = [(self.prefix_ids(e.messages), ids) for e, (ids, _) in zip(examples, tokens, strict=True)]
        return [
            AnswerTrace(id=e.id, scores=self.token_scores(f), token_ends=ends)
            for e, f, (_, ends) in zip(examples, self.features(pairs), tokens, strict=True)
        ]

    def start(self, conversation: Sequence[Message]) -> AnswerScorer:
        return AnswerScorer(self, self.prefix_ids(conversation))


def _answer(example: ClassifierExample) -> str:
    if example.answer is None:
        raise InputError(
            f"example {example.id} has no answer for the output classifier to read",
            field="answer",
            hint="the output classifier trains and is evaluated on prompt + answer examples",
        )
    return example.answer


class AnswerScorer:
    """The running verdict on one answer: the conversation read once into a cache, then each push reads only the
    tokens it adds.

    The whole answer so far is re-tokenized at every push and the cache rolled back to where the new tokens start
    (usually the last, unfinished word), so pieces cut anywhere score as the full answer would.
    """

    def __init__(self, classifier: StreamModel, prefix: list[int]):
        from transformers import DynamicCache

        self.classifier = classifier
        self.cache = DynamicCache(config=classifier.lm.model.config)
        self.prefix = len(prefix)
        self.text = ""
        self.ids: list[int] = []
        self.scores: list[float] = []
        self.peak = 0.0
        self._read(prefix)

    @torch.inference_mode()
    def _read(self, ids: list[int]) -> torch.Tensor:
        tensor = torch.tensor([ids], device=self.classifier.lm.model.device)
        with captured(self.classifier.module) as seen:
            self.classifier.lm.model.get_decoder()(input_ids=tensor, past_key_values=self.cache, use_cache=True)
        return seen[0][0]

    def push(self, text: str) -> Verdict:
        return self.push_many([text])[0][0]

    def push_many(self, texts: Sequence[str]) -> list[tuple[Verdict, int]]:
        """All the pieces in one forward step; each piece's verdict covers the tokens that end within it or before.
        A token re-read after a rollback never lowers the verdict: the running maximum only grows."""
        ends = list(accumulate((len(text) for text in texts), initial=len(self.text)))[1:]
        self.text += "".join(texts)
        ids, token_ends = self.classifier.answer_tokens(self.text)
        keep = shared_length(self.ids, ids)
        if keep < len(self.ids):
            self.cache.crop(keep - len(self.ids))  # a negative count: the tokens to drop from the end
            del self.ids[keep:], self.scores[keep:]
        if keep < len(ids):
            self.scores += self.classifier.token_scores(self._read(ids[keep:]))
            self.ids += ids[keep:]
        results = []
        for end in ends:
            read = bisect_right(token_ends, end)
            self.peak = max(self.peak, *self.scores[keep:read], 0.0)
            results.append((Verdict(score=self.peak, flagged=self.peak > self.classifier.threshold), read))
        return results

    def count(self, text: str) -> int:
        """Tokens in `text` read alone (a word cut at its start may join the answer's last token once pushed)."""
        return len(self.classifier.answer_tokens(text)[0])

    @property
    def tokens(self) -> int:
        return len(self.ids)


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
    tokens = [classifier.answer_tokens(_answer(e)) for e in train]
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
