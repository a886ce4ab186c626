"""The streaming output classifier attached to the generation of its own backbone: the head reads the hidden states
the generation computes anyway, so watching an answer costs one head per token, not a second forward pass.

The flag comes one token late: a token's hidden state is computed when the model reads it to predict the next one,
so the score of token t is known once token t + 1 has been sampled (and the last token of an answer is never scored).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import StoppingCriteria

from constitutional.classifiers.stream_model import StreamModel, backbone_fingerprint, captured, feature_module
from constitutional.errors import InputError
from constitutional.models.base import Prompt, SamplingParams
from constitutional.models.hf import TransformersModel


@contextmanager
def attach(classifier: StreamModel, policy: TransformersModel) -> Iterator[GenerationWatch]:
    """A `watch` for `policy.generate(prompts, params, watch=...)` that reads the hidden states the generation
    computes; `policy` must be the classifier's backbone (same weights), or the head would read foreign states.
    """
    if backbone_fingerprint(policy.model, classifier.layer) != classifier.fingerprint:
        raise InputError(
            f"the output classifier was trained on another model's hidden states than {policy.name}'s",
            field="backbone",
            hint="attach it only to the model it was trained on; score other models' answers with start()",
        )
    with captured(feature_module(policy.model, classifier.layer)) as seen:
        yield GenerationWatch(classifier, policy, seen)


# ---- the watch and its stopping criterion ---------------------------------------------------------------------------


@dataclass
class GuardedRow:
    """What the classifier saw of one answer generated under it."""

    scores: list[float] = field(default_factory=list)  # one per answer token read, in order
    stopped_at: int | None = None  # answer tokens generated when the flag stopped it
    ended: bool = False  # the answer ended (end of sequence, or a stop string): later steps are padding


class StopWhenFlagged(StoppingCriteria):
    """Stops each row of a generation batch once the running maximum of its answer's scores crosses the threshold."""

    def __init__(self, watch: GenerationWatch, prompt_length: int, rows: list[GuardedRow]):
        self.watch, self.prompt_length, self.rows = watch, prompt_length, rows

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        generated = input_ids.shape[1] - self.prompt_length
        classifier = self.watch.classifier
        # The last forward read answer token `generated - 2`; on the first call it read the prompt.
        if generated >= 2:
            with torch.inference_mode():
                probabilities = torch.sigmoid(classifier.head(self.watch.seen[0][:, -1])).tolist()
            read = input_ids[:, -2].tolist()
            for row, p, token in zip(self.rows, probabilities, read, strict=True):
                row.ended |= token in self.watch.end_tokens
                if row.ended or row.stopped_at is not None:
                    continue
                row.scores.append(p)
                if p > classifier.threshold:
                    row.stopped_at = generated
        return torch.tensor([row.stopped_at is not None for row in self.rows], device=input_ids.device)


class GenerationWatch:
    """The `watch` the transformers backend calls per batch: one StopWhenFlagged per batch, rows kept by prompt."""

    def __init__(self, classifier: StreamModel, policy: TransformersModel, seen: list[torch.Tensor]):
        self.classifier, self.seen = classifier, seen
        eos = policy.model.generation_config.eos_token_id
        self.end_tokens = {*(eos if isinstance(eos, list) else [eos]), policy.tokenizer.pad_token_id} - {None}
        self.rows: dict[int, GuardedRow] = {}

    def __call__(self, prompt_length: int, indices: list[int]) -> StopWhenFlagged:
        return StopWhenFlagged(self, prompt_length, [self.rows.setdefault(i, GuardedRow()) for i in indices])


class GuardedAnswer(BaseModel):
    """An answer generated with the streaming classifier attached: where it stopped and the scores it saw."""

    model_config = ConfigDict(extra="forbid")

    text: str
    stopped_at: int | None = Field(description="Answer tokens generated when the flag stopped it; None if it ran on.")
    scores: list[float] = Field(description="The head's score at each answer token read (the last one is never read).")
    threshold: float


def generate_guarded(
    classifier: StreamModel, policy: TransformersModel, prompts: Sequence[Prompt], params: SamplingParams
) -> list[GuardedAnswer]:
    """Generate with the classifier attached: each answer stops where its running score crosses the threshold."""
    with attach(classifier, policy) as watch:
        texts = policy.generate(prompts, params, watch=watch)
    return [
        GuardedAnswer(
            text=text,
            stopped_at=watch.rows[i].stopped_at,
            scores=watch.rows[i].scores,
            threshold=classifier.threshold,
        )
        for i, text in enumerate(texts)
    ]
