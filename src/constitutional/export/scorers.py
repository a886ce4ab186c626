"""Rewards for other trainers: our preference model, or the constitution-conditioned judge, behind one `score` call.

A reward is described by a small JSON file (`cai export` writes one; see `RewardSpec`) or is simply a preference
model folder. Each process loads a reward once, on first use, and keeps it (`reward_for`). verl and OpenRLHF ask
for one completion per call, from many threads at once; `Batcher` scores everything that arrived while the model
was busy in one batched call, so the model still sees batches and is only ever used by one thread at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from constitutional.compare.adherence import ADHERENCE_QUESTIONS, ADHERENCE_RUBRIC
from constitutional.comparison import FeedbackConfig, draw_comparison, judge, pair_rng, principle_pool
from constitutional.errors import InputError, from_validation
from constitutional.evaluate.judge import option_probabilities
from constitutional.models.base import LanguageModel, Message
from constitutional.models.spec import ModelSpec
from constitutional.prompts import JUDGE_RATING_LEAD, YES_NO_OPTIONS, judge_rating_question

# Where a reward is named when the framework's call does not carry it: a reward JSON file or a preference model.
REWARD_ENV = "CAI_REWARD"


class PreferenceModelReward(BaseModel):
    """The trained preference model's scalar score of the conversation ending in the completion."""

    model_config = ConfigDict(extra="forbid")

    scorer: Literal["preference_model"] = "preference_model"
    path: str = Field(description="A preference model folder, e.g. RUN_DIR/preference_model.")
    batch_size: int = Field(default=16, ge=1, description="Sequences per forward pass.")


class JudgeReward(BaseModel):
    """The judge's probability, in [0, 1], that the completion is good by the constitution's own principles."""

    model_config = ConfigDict(extra="forbid")

    scorer: Literal["judge"] = "judge"
    model: ModelSpec = Field(description="The judge model (a recipe's models.judge).")
    constitution: str = Field(default="harmless", description="Built-in name or path of the constitution.")
    mode: Literal["compare", "rate"] = Field(
        default="compare",
        description="compare: P(completion better than the prompt's reference answer) under drawn comparison "
        "principles, as rl_label asks it; rate: P(the completion follows each drawn principle), asked as 'follows?' "
        "and 'goes against?' so the judge's taste for Yes cancels.",
    )
    feedback: FeedbackConfig = Field(
        default_factory=lambda: FeedbackConfig(debias=True),
        description="Principles per completion, both option orders, demonstrations (a recipe's label section).",
    )
    seed: int = Field(default=0, description="Seeds the principle draws, per prompt id.")

    @model_validator(mode="after")
    def _no_chain_of_thought(self) -> JudgeReward:
        if self.feedback.cot:
            raise ValueError(
                "feedback.cot: a chain of thought the judge fails to write would leave a completion unscored; "
                "rewards use the direct multiple-choice question"
            )
        return self


RewardSpec = Annotated[PreferenceModelReward | JudgeReward, Field(discriminator="scorer")]
SPEC = TypeAdapter(RewardSpec)


@dataclass(frozen=True)
class ScoreItem:
    """One completion to score, with what a judge or preference model needs to read it."""

    conversation: list[Message]
    completion: str
    kind: str = "red_team"  # red_team: judged by the constitution; helpful: by the helpfulness questions
    reference: str | None = None  # the answer a comparing judge measures the completion against
    id: str = ""  # seeds the principle draws: every completion to one prompt is judged under the same principles

    @property
    def key(self) -> str:
        return self.id or hashlib.sha256(json.dumps(self.conversation).encode()).hexdigest()[:16]


class Scorer(Protocol):
    def score(self, items: Sequence[ScoreItem]) -> list[float]: ...


def messages(value: Any) -> list[Message]:
    """A conversation as plain {role, content} dicts: from text (one user turn) or any sequence of mappings."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    try:
        return [{"role": str(m["role"]), "content": str(m["content"])} for m in value]
    except (TypeError, KeyError):
        raise InputError(
            f"not a conversation: {str(value)[:80]!r}", hint="give text or a list of {role, content} messages"
        ) from None


class PreferenceModelScorer:
    def __init__(self, spec: PreferenceModelReward):
        from constitutional.reward import PreferenceModel

        self.model = PreferenceModel(spec.path, spec.batch_size)

    def score(self, items: Sequence[ScoreItem]) -> list[float]:
        return self.model.score([i.conversation for i in items], [i.completion for i in items])


class JudgeScorer:
    def __init__(self, spec: JudgeReward, model: LanguageModel):
        from constitutional.constitution import load_constitution

        self.spec = spec
        self.model = model
        self.constitution = load_constitution(spec.constitution)

    def score(self, items: Sequence[ScoreItem]) -> list[float]:
        return self._compare(items) if self.spec.mode == "compare" else self._rate(items)

    def _pool(self, item: ScoreItem):
        return principle_pool(item.kind, self.constitution, self.spec.feedback)

    def _compare(self, items: Sequence[ScoreItem]) -> list[float]:
        missing = [item.key for item in items if not item.reference]
        if missing:
            raise InputError(
                f"the judge compares each completion with the prompt's reference answer, and {len(missing)} "
                f"have none (ids {missing[:3]})",
                field="reference",
                hint="export the prompts with `cai export` (they carry the run's answers), or set mode 'rate'",
            )
        config, seed = self.spec.feedback, self.spec.seed
        comparisons = [
            draw_comparison(
                pair_rng(seed, item.key),
                item.conversation,
                item.completion,
                item.reference,
                self._pool(item),
                self.constitution,
                config,
            )
            for item in items
        ]
        return [verdict.p_a for verdict in judge(self.model, comparisons, config)]

    def _rate(self, items: Sequence[ScoreItem]) -> list[float]:
        questions, counts = [], []
        for item in items:
            pool = self._pool(item)
            drawn = pair_rng(self.spec.seed, item.key).sample(pool, min(self.spec.feedback.num_principles, len(pool)))
            for principle in drawn:
                questions += [
                    judge_rating_question(
                        item.conversation,
                        item.completion,
                        ADHERENCE_RUBRIC.format(principle=principle.comparison.strip(), question=question),
                    )
                    for question in ADHERENCE_QUESTIONS.values()
                ]
            counts.append(len(drawn))
        probs, _ = option_probabilities(self.model, questions, YES_NO_OPTIONS, JUDGE_RATING_LEAD)
        scores, at = [], 0
        for count in counts:
            # Per principle: P(Yes | follows?) and P(No | goes against?), averaged.
            per_principle = [(probs[at + 2 * n][0] + probs[at + 2 * n + 1][1]) / 2 for n in range(count)]
            scores.append(sum(per_principle) / count)
            at += 2 * count
        return scores


def load_spec(source: str | Path) -> PreferenceModelReward | JudgeReward:
    """A reward from a reward JSON file, or a preference model folder given directly."""
    path = Path(source)
    if path.is_dir():
        return PreferenceModelReward(path=str(path.resolve()))
    if not path.is_file():
        raise InputError(
            "no such reward file or preference model folder",
            path=path,
            hint="give the reward.json `cai export` wrote, or a preference model folder (RUN_DIR/preference_model)",
        )
    try:
        return SPEC.validate_json(path.read_bytes())
    except ValidationError as err:
        raise from_validation(err, path=path, hint="write it with `cai export --reward pm|judge`") from None


def load_scorer(spec: PreferenceModelReward | JudgeReward) -> Scorer:
    if isinstance(spec, PreferenceModelReward):
        return PreferenceModelScorer(spec)
    from constitutional.models import load_model

    return JudgeScorer(spec, load_model(spec.model))


class Batcher:
    """Scores items from any number of threads; whatever arrives while the model is busy is scored next, together.

    The first caller to find the model idle scores the queue, and keeps scoring until it is empty; everyone else
    waits for their own results. One thread at a time uses the model, so it need not be thread-safe.
    """

    def __init__(self, scorer: Scorer):
        self.scorer = scorer
        self._lock = threading.Lock()
        self._queue: list[tuple[ScoreItem, Future]] = []
        self._busy = False

    def score(self, items: Sequence[ScoreItem]) -> list[float]:
        futures = [Future() for _ in items]
        with self._lock:
            self._queue += zip(items, futures, strict=True)
            lead = not self._busy
            self._busy = True
        if lead:
            self._drain()
        return [future.result() for future in futures]

    def _drain(self) -> None:
        while True:
            with self._lock:
                batch, self._queue = self._queue, []
                if not batch:
                    self._busy = False
                    return
            try:
                scores = self.scorer.score([item for item, _ in batch])
            except BaseException as err:  # every waiting caller gets the error, not a hang
                for _, future in batch:
                    future.set_exception(err)
                continue
            for (_, future), value in zip(batch, scores, strict=True):
                future.set_result(float(value))


_LOADED: dict[str, Batcher] = {}
_LOADING = threading.Lock()


def reward_source(explicit: str | Path | None = None) -> str:
    """The reward named by the call, else by $CAI_REWARD."""
    source = explicit or os.environ.get(REWARD_ENV)
    if not source:
        raise InputError(
            f"no reward named: pass one, or set {REWARD_ENV}",
            field=REWARD_ENV,
            hint="the reward.json `cai export` wrote, or a preference model folder (RUN_DIR/preference_model)",
        )
    return str(source)


def reward_for(source: str | Path) -> Batcher:
    """The reward at `source`, loaded once per process and kept."""
    key = str(Path(source).resolve())
    with _LOADING:
        if key not in _LOADED:
            _LOADED[key] = Batcher(load_scorer(load_spec(key)))
        return _LOADED[key]
