"""The generator and judge roles of the synthetic data stage: batched model calls whose raw results are kept as
records, so a stage killed part-way redoes only the calls it had not written yet.

Each call is a `Task` with a stable id. Its result is written as soon as its chunk is done: a `Generation` (the
prompt and the text the generator wrote) or a `Judgement` (the judge's probability that an item is restricted).
The examples are assembled from these records afterwards, deterministically, so assembling again after a resume
gives the same examples.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from constitutional.engine import Advance, ChunkEngine, LocalEngine, Output
from constitutional.models.base import LanguageModel, Prompt, SamplingParams, uses_chat
from constitutional.prompts import JUDGE_RATING_LEAD, YES_NO_OPTIONS, judge_options, judge_request
from constitutional.records import Record
from constitutional.store import StageFolder

Purpose = Literal["requests", "answer", "paraphrase"]


class Generation(Record):
    """One generator call, as written: what it was asked and what it wrote."""

    purpose: Purpose
    category: str
    template: str = Field(
        description="Name of the prompts.py template the prompt was built from ('chat': the generator's own)."
    )
    prompt: Prompt
    output: str
    model: str
    params: dict
    seed: int


class Judgement(Record):
    """The judge's reading of one example (same id): the probability that it is restricted content."""

    kind: Literal["request", "answer"]
    p_restricted: float = Field(ge=0.0, le=1.0)
    logprobs: list[float] = Field(description="[log p(Yes), log p(No)] as the judge scored them.")
    template: str
    model: str


@dataclass(frozen=True)
class Task:
    """One call to make: the id its record gets, and what it needs."""

    id: str
    purpose: Purpose
    category: str
    template: str
    prompt: Prompt


def _chunk_seed(seed: int, first_id: str) -> int:
    """A sampling seed per chunk, from its first task: chunks do not repeat each other's random draws, and a chunk
    samples alike however many chunks came before it in this process."""
    return seed + int(hashlib.sha256(first_id.encode()).hexdigest()[:6], 16)


def _chunks(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def generate(
    folder: StageFolder,
    model: LanguageModel,
    tasks: Sequence[Task],
    params: dict[Purpose, SamplingParams],
    seed: int,
    chunk_size: int,
    advance: Callable[[int], None] = lambda n: None,
    engine: ChunkEngine | None = None,
) -> dict[str, Generation]:
    """Every task's generation: those already on disk, then the rest in batched calls of `chunk_size` (by `engine`:
    default `model`, in this process)."""
    done = {g.id for g in folder.records(Generation)}
    todo = [task for task in tasks if task.id not in done]
    advance(len(tasks) - len(todo))
    chunks = [
        chunk
        for purpose in ("requests", "answer", "paraphrase")
        for chunk in _chunks([t for t in todo if t.purpose == purpose], chunk_size)
    ]
    writers = folder.writers()
    try:
        engine = engine or LocalEngine(model)
        engine.run(chunks, functools.partial(_generations, params, seed), folder, writers, advance)
    finally:
        for writer in writers:
            writer.close()
    return {g.id: g for g in folder.records(Generation)}


def _generations(
    params: dict[Purpose, SamplingParams], seed: int, model: LanguageModel, chunk: Sequence[Task], advance: Advance
) -> Output:
    """One chunk of tasks of one purpose, generated in one batched call."""
    batch_params = params[chunk[0].purpose].model_copy(update={"seed": _chunk_seed(seed, chunk[0].id)})
    outputs = model.generate([task.prompt for task in chunk], batch_params)
    made = [
        Generation(
            id=task.id,
            purpose=task.purpose,
            category=task.category,
            template=task.template,
            prompt=task.prompt,
            output=output,
            model=model.name,
            params=batch_params.model_dump(),
            seed=seed,
        )
        for task, output in zip(chunk, outputs, strict=True)
    ]
    advance(len(chunk))
    return Output(made)


@dataclass(frozen=True)
class JudgeTask:
    id: str
    kind: Literal["request", "answer"]
    question: str


def judge(
    folder: StageFolder,
    model: LanguageModel,
    tasks: Sequence[JudgeTask],
    template: str,
    chunk_size: int,
    advance: Callable[[int], None] = lambda n: None,
    engine: ChunkEngine | None = None,
) -> dict[str, Judgement]:
    """The judge's P(restricted) for every task: Yes vs No read from one scoring pass, normalised over the two
    (by `engine`: default `model`, in this process)."""
    done = {j.id for j in folder.records(Judgement)}
    todo = [task for task in tasks if task.id not in done]
    advance(len(tasks) - len(todo))
    writers = folder.writers()
    try:
        engine = engine or LocalEngine(model)
        engine.run(list(_chunks(todo, chunk_size)), functools.partial(_judgements, template), folder, writers, advance)
    finally:
        for writer in writers:
            writer.close()
    return {j.id: j for j in folder.records(Judgement)}


def _judgements(template: str, model: LanguageModel, chunk: Sequence[JudgeTask], advance: Advance) -> Output:
    """One chunk of items read by the judge in one scoring pass."""
    chat = uses_chat(model)
    prompts: list[Prompt] = [judge_request(task.question, chat, JUDGE_RATING_LEAD) for task in chunk]
    scored = model.choice_logprobs(prompts, judge_options(YES_NO_OPTIONS, chat))
    made = [
        Judgement(
            id=task.id,
            kind=task.kind,
            p_restricted=_p_yes(row),
            logprobs=list(row),
            template=template,
            model=model.name,
        )
        for task, row in zip(chunk, scored, strict=True)
    ]
    advance(len(chunk))
    return Output(made)


def _p_yes(logprobs: Sequence[float]) -> float:
    """P(Yes) of the two options, normalised: softmax over [log p(Yes), log p(No)]."""
    yes, no = logprobs
    top = max(yes, no)
    return math.exp(yes - top) / (math.exp(yes - top) + math.exp(no - top))
