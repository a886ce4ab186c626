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
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import torch
from torch import nn

from constitutional.classifiers.metrics import AnswerTrace
from constitutional.classifiers.records import ClassifierExample
from constitutional.classifiers.screening import Outcome, Verdict
from constitutional.errors import InputError
from constitutional.models.base import Message
from constitutional.models.hf import TransformersModel
from constitutional.models.kvcache import KeysValues, KeyValueStore, left_padded
from constitutional.models.prefix import shared_length

# SmolLM2-135M cut after layer 15 keeps 12 KB per token in bfloat16: 64 MiB holds ~5,000 tokens of conversations.
CONVERSATION_STORE_BYTES = 2**26

# ---- the head ----------------------------------------------------------------------------------------------------


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
        self.conversations = KeyValueStore(CONVERSATION_STORE_BYTES)  # read by the streams' thread only

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
        tokens = [self.answer_tokens(answer_text(e)) for e in examples]
        if max_tokens is not None:
            tokens = [(ids[:max_tokens], ends[:max_tokens]) for ids, ends in tokens]
        pairs = [(self.prefix_ids(e.messages), ids) for e, (ids, _) in zip(examples, tokens, strict=True)]
        return [
            AnswerTrace(id=e.id, scores=self.token_scores(f), token_ends=ends)
            for e, f, (_, ends) in zip(examples, self.features(pairs), tokens, strict=True)
        ]

    def start(self, conversation: Sequence[Message]) -> AnswerScorer:
        return AnswerScorer(self, self.prefix_ids(conversation))

    def remember(self, conversation: list[int], past: KeysValues) -> None:
        """Keep the keys and values of a conversation just read, for the answers to conversations that begin alike
        (a shared system prompt, the earlier turns of a chat, a client's retry) to start from."""
        length = len(conversation)
        keys_values = torch.stack([torch.stack([keys[:, :length], values[:, :length]]) for keys, values in past])
        self.conversations.add(conversation, keys_values)

    def push_batch(self, pushes: Sequence[tuple[AnswerScorer, Sequence[str]]]) -> list[Outcome]:
        """Each (scorer, pieces) pushed as `push_many` would, all in one batched forward pass: the guard scores the
        steps of every stream that came while its last pass ran together, at far less than a pass each (SmolLM2 cut
        after layer 15, bf16, one thread: 8 streams' steps of 16 tokens in one pass cost 0.46 ms per token, one
        stream's alone 1.12). If the pass fails, each row is read alone, so an error reaches only the pushes it
        belongs to (as an exception in their place)."""
        steps = [_attempt(scorer.plan, texts) for scorer, texts in pushes]
        reading = [i for i, step in enumerate(steps) if isinstance(step, _Step) and step.unread]
        rows = [(steps[i].past, steps[i].unread) for i in reading]
        try:
            reads = self.read(rows)
        except Exception:
            reads = [_attempt(lambda row: self.read([row])[0], row) for row in rows]
        read_of = dict(zip(reading, reads, strict=True))
        outcomes: list[Outcome] = []
        for index, ((scorer, _), step) in enumerate(zip(pushes, steps, strict=True)):
            read = read_of.get(index)
            failure = next((item for item in (step, read) if isinstance(item, Exception)), None)
            outcomes.append(failure or scorer.commit(step, read))
        return outcomes

    @torch.inference_mode()
    def read(self, rows: Sequence[tuple[KeysValues | None, list[int]]]) -> list[tuple[KeysValues, torch.Tensor]]:
        """Per row (what its cache holds, the ids that follow it): the cache with those ids read, and the feature-layer
        output at each of them. Rows of similar lengths are read together, `lm.batch_size` at a time."""
        out: list[tuple[KeysValues, torch.Tensor]] = [([], torch.empty(0))] * len(rows)
        order = sorted(range(len(rows)), key=lambda i: read_length(rows[i][0]) + len(rows[i][1]))
        for start in range(0, len(order), self.lm.batch_size):
            batch = order[start : start + self.lm.batch_size]
            for i, outcome in zip(batch, self._read_batch([rows[i] for i in batch]), strict=True):
                out[i] = outcome
        return out

    def _read_batch(
        self, rows: Sequence[tuple[KeysValues | None, list[int]]]
    ) -> list[tuple[KeysValues, torch.Tensor]]:
        """One forward pass over rows whose caches are left-padded to the longest and whose new ids are right-padded:
        masked out, padding changes no real token's output (beyond float rounding: a row scores as it would alone)."""
        lengths = [read_length(past) for past, _ in rows]
        past_width = max(lengths)
        new_width = max(len(ids) for _, ids in rows)
        device = self.lm.model.device
        ids = torch.full((len(rows), new_width), self.lm.tokenizer.pad_token_id, device=device)
        mask = torch.zeros(len(rows), past_width + new_width, dtype=torch.long, device=device)
        positions = torch.zeros(len(rows), new_width, dtype=torch.long, device=device)
        for row, ((_, new), length) in enumerate(zip(rows, lengths, strict=True)):
            ids[row, : len(new)] = torch.tensor(new, device=device)
            mask[row, past_width - length : past_width + len(new)] = 1
            positions[row] = torch.arange(length, length + new_width, device=device)
        cache = batched_cache([past for past, _ in rows], past_width)
        with captured(self.module) as seen:
            self.lm.model.get_decoder()(
                input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True
            )
        return [
            (row_of(cache, row, past_width - length, past_width + len(new)), seen[0][row, : len(new)])
            for row, ((_, new), length) in enumerate(zip(rows, lengths, strict=True))
        ]


def _attempt(function: Any, *args: Any) -> Any:
    """`function(*args)`, or the exception it raised."""
    try:
        return function(*args)
    except Exception as err:
        return err


def answer_text(example: ClassifierExample) -> str:
    if example.answer is None:
        raise InputError(
            f"example {example.id} has no answer for the output classifier to read",
            field="answer",
            hint="the output classifier trains and is evaluated on prompt + answer examples",
        )
    return example.answer


def read_length(past: KeysValues | None) -> int:
    """Tokens whose keys and values `past` holds (None: nothing read yet)."""
    return 0 if past is None else past[0][0].shape[-2]


def first_tokens(past: KeysValues | None, tokens: int) -> KeysValues | None:
    """The keys and values of the first `tokens` tokens (views)."""
    return None if past is None or tokens == 0 else [(keys[:, :tokens], values[:, :tokens]) for keys, values in past]


def batched_cache(pasts: Sequence[KeysValues | None], width: int) -> Any:
    """A transformers cache holding every row left-padded with zeros to `width` tokens (the mask hides them). Its
    layers all keep every position, whatever the model's kind (a sliding-window layer's mask still limits what
    attention reads), so that each row's whole sequence can be taken back out."""
    from transformers import DynamicCache

    return DynamicCache(left_padded(pasts, width)) if width else DynamicCache()


def row_of(cache: Any, row: int, start: int, end: int) -> KeysValues:
    """One row's tokens out of a batched cache, copied (a view would keep the whole batch's tensors alive)."""
    return [(layer.keys[row, :, start:end].clone(), layer.values[row, :, start:end].clone()) for layer in cache.layers]


@dataclass
class _Step:
    """One push between planning and reading: the answer as it will be, and what the backbone must read for it."""

    text: str
    ids: list[int]  # the answer's tokens once the pieces are in
    token_ends: list[int]
    piece_ends: list[int]  # character offset where each pushed piece ends
    keep: int  # answer tokens read before that the new tokenization keeps
    past: KeysValues | None  # the cache rolled back to those tokens (views; the scorer's own stays as it was)
    unread: list[int]  # ids to read after `past`: the conversation first, on the first push
    conversation_stored: int | None  # on the first push, the conversation's tokens that came from the store


class AnswerScorer:
    """The running verdict on one answer: the conversation read into a cache with the first push, then each push
    reads only the tokens it adds.

    The whole answer so far is re-tokenized at every push and the cache rolled back to where the new tokens start
    (usually the last, unfinished word), so pieces cut anywhere score as the full answer would. A push is planned
    (nothing changes), read (alone or batched with other scorers' pushes), then committed, so a failed pass leaves
    the scorer as it was.
    """

    def __init__(self, classifier: StreamModel, prefix: list[int]):
        self.classifier = classifier
        self.prefix = prefix
        self.past: KeysValues | None = None
        self.text = ""
        self.ids: list[int] = []
        self.scores: list[float] = []
        self.peak = 0.0

    def push(self, text: str) -> Verdict:
        return self.push_many([text])[0][0]

    def push_many(self, texts: Sequence[str]) -> list[tuple[Verdict, int]]:
        """All the pieces in one forward step; each piece's verdict covers the tokens that end within it or before.
        A token re-read after a rollback never lowers the verdict: the running maximum only grows."""
        outcome = self.classifier.push_batch([(self, texts)])[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def plan(self, texts: Sequence[str]) -> _Step:
        text = self.text + "".join(texts)
        ids, token_ends = self.classifier.answer_tokens(text)
        keep = shared_length(self.ids, ids)
        stored = None
        if self.past is None:  # the first push reads the conversation too, from where what the store holds ends
            past = self.classifier.conversations.longest(self.prefix, len(self.prefix), minimum=1)
            stored = read_length(past)
            unread = self.prefix[stored:] + ids[keep:]
        else:
            past = first_tokens(self.past, len(self.prefix) + keep)
            unread = ids[keep:]
        piece_ends = list(accumulate((len(piece) for piece in texts), initial=len(self.text)))[1:]
        return _Step(text, ids, token_ends, piece_ends, keep, past, unread, stored)

    def commit(self, step: _Step, read: tuple[KeysValues, torch.Tensor] | None) -> list[tuple[Verdict, int]]:
        """Take a planned push and what reading it gave (None: nothing was new); per piece, verdict and tokens."""
        self.text = step.text
        del self.ids[step.keep :], self.scores[step.keep :]
        self.past = step.past
        if read is not None:
            self.past, features = read
            answer_features = features[len(features) - (len(step.ids) - step.keep) :]
            self.scores += self.classifier.token_scores(answer_features)
            self.ids = step.ids
        if step.conversation_stored is not None and step.conversation_stored < len(self.prefix):
            self.classifier.remember(self.prefix, self.past)
        results = []
        for end in step.piece_ends:
            scored = bisect_right(step.token_ends, end)
            self.peak = max(self.peak, *self.scores[step.keep : scored], 0.0)
            results.append((Verdict(score=self.peak, flagged=self.peak > self.classifier.threshold), scored))
        return results

    def count(self, text: str) -> int:
        """Tokens in `text` read alone (a word cut at its start may join the answer's last token once pushed)."""
        return len(self.classifier.answer_tokens(text)[0])

    @property
    def tokens(self) -> int:
        return len(self.ids)
