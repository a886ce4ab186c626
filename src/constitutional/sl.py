"""SL-CAI: answer red-team prompts, critique each answer under a randomly drawn principle, revise, repeat.

All prompts of a chunk advance one step together, so every step is one batched call to the model. A chunk
is also the unit of durability: its records are written when its last step finishes, so a kill loses at
most the chunk in flight and a rerun redoes only what is missing.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from constitutional.constitution import Constitution
from constitutional.engine import Advance, ChunkEngine, LocalEngine, Output
from constitutional.models.base import LanguageModel, Message, SamplingParams, context_overflows
from constitutional.progress import progress_bar
from constitutional.prompts import critique_prompt, demonstration_turns, revision_prompt
from constitutional.records import PromptRecord, RejectedRecord, RevisionStep, SLRecord
from constitutional.sources import load_prompts, require_fitting, split_refused
from constitutional.store import StageFolder


class SLConfig(BaseModel):
    """The critique -> revision stage."""

    model_config = ConfigDict(extra="forbid")

    red_team_prompts: str = Field(default="builtin:red-team", description="Path or builtin:NAME of red-team prompts.")
    helpful_prompts: str | None = Field(
        default="builtin:helpful", description="Prompts answered plainly, to mix into SFT; null for none."
    )
    prompt_column: str = Field(default="prompt", description="Column or field holding the prompt text.")
    max_prompts: int | None = Field(default=None, ge=1, description="Use only the first N prompts of each set.")
    max_prompt_chars: int = Field(
        default=2000,
        ge=1,
        description="Longer prompts are skipped with a reason, as are prompts whose longest critique or revision "
        "request would not fit the policy's context window.",
    )
    num_revisions: int = Field(default=4, ge=1, description="Critique -> revision steps per prompt.")
    num_principles: int | None = Field(
        default=None, ge=1, description="Draw from only this many principles (chosen by seed); null for all."
    )
    critique: bool = Field(default=True, description="False revises directly, without writing a critique first.")
    num_demonstrations: int = Field(default=2, ge=0, description="Few-shot demonstrations before each request.")
    chunk_size: int = Field(default=32, ge=1, description="Prompts advanced together; the unit of resume.")
    sampling: SamplingParams = Field(default_factory=SamplingParams)


def _rng(seed: int, prompt_id: str, purpose: str) -> random.Random:
    """A generator per prompt, so draws do not depend on chunking or on what a resumed run skipped."""
    return random.Random(f"{seed}:{prompt_id}:{purpose}")


def revise(
    policy: LanguageModel,
    constitution: Constitution,
    prompts: Sequence[PromptRecord],
    config: SLConfig,
    seed: int,
    on_generated=lambda count: None,
) -> list[SLRecord]:
    """Run the whole critique -> revision loop for a chunk of prompts, one batched call per step."""
    principles = {p.id: p for p in constitution.critique_revision}
    rngs = [_rng(seed, p.id, "principles") for p in prompts]
    params = config.sampling.model_copy(update={"seed": seed})
    conversations = [p.messages for p in prompts]
    current = policy.generate(conversations, params)
    on_generated(len(prompts))
    initial = list(current)
    steps: list[list[RevisionStep]] = [[] for _ in prompts]
    for step_number in range(config.num_revisions):
        drawn = [rng.choice(constitution.critique_revision) for rng in rngs]
        prefixes = [
            demonstration_turns(
                rng.sample(
                    constitution.demonstrations.critique_revision,
                    min(config.num_demonstrations, len(constitution.demonstrations.critique_revision)),
                ),
                principles,
                with_critique=config.critique,
            )
            for rng in rngs
        ]
        step_params = params.model_copy(update={"seed": seed + 1000 * (step_number + 1)})
        critiques: list[str | None] = [None] * len(prompts)
        if config.critique:
            critiques = policy.generate(
                [critique_prompt(*args) for args in zip(prefixes, conversations, current, drawn, strict=True)],
                step_params,
            )
            on_generated(len(prompts))
        revisions = policy.generate(
            [revision_prompt(*args) for args in zip(prefixes, conversations, current, drawn, critiques, strict=True)],
            step_params,
        )
        on_generated(len(prompts))
        for i, principle in enumerate(drawn):
            steps[i].append(RevisionStep(principle=principle.id, critique=critiques[i], revision=revisions[i]))
        current = revisions
    return [
        SLRecord(
            id=p.id,
            kind="red_team",
            prompt=p.messages,
            initial=initial[i],
            steps=steps[i],
            constitution=constitution.tag,
            model=policy.name,
            params=params.model_dump(),
            seed=seed,
        )
        for i, p in enumerate(prompts)
    ]


def answer(
    policy: LanguageModel, prompts: Sequence[PromptRecord], config: SLConfig, constitution: Constitution, seed: int
) -> list[SLRecord]:
    """Plain answers to helpfulness prompts from the same model (no critique, no revision)."""
    params = config.sampling.model_copy(update={"seed": seed})
    answers = policy.generate([p.messages for p in prompts], params)
    return [
        SLRecord(
            id=p.id,
            kind="helpful",
            prompt=p.messages,
            initial=text,
            constitution=constitution.tag,
            model=policy.name,
            params=params.model_dump(),
            seed=seed,
        )
        for p, text in zip(prompts, answers, strict=True)
    ]


def _longest_step(constitution: Constitution, config: SLConfig, conversation: list[Message]) -> list[Message]:
    """The longest request a step can build for a conversation, with empty answer and critique: the revision
    request after the longest demonstrations, under the principle with the longest requests."""
    principles = {p.id: p for p in constitution.critique_revision}
    demos = sorted(
        constitution.demonstrations.critique_revision,
        key=lambda d: len(d.prompt) + len(d.response) + len(d.critique) + len(d.revision),
        reverse=True,
    )[: config.num_demonstrations]
    principle = max(constitution.critique_revision, key=lambda p: len(p.critique) + len(p.revision))
    prefix = demonstration_turns(demos, principles, with_critique=config.critique)
    return revision_prompt(prefix, conversation, "", principle, "" if config.critique else None)


def fit_context(
    policy: LanguageModel, constitution: Constitution, prompts: Sequence[PromptRecord], kind: str, config: SLConfig
) -> tuple[list[PromptRecord], list[RejectedRecord]]:
    """The prompts whose every request fits the policy's context window, and the others with the reason.

    A helpfulness prompt needs room for its answer. A red-team prompt's longest request is a revision request: it
    holds the demonstrations, the answer and the critique (each up to max_new_tokens), and the revision still
    has to be written after it.
    """
    tokens = config.sampling.max_new_tokens
    if kind == "red_team":
        requests = [_longest_step(constitution, config, p.messages) for p in prompts]
        what = "its longest revision request (longest demonstrations, empty answer and critique)"
        reasons = context_overflows(policy, requests, tokens * (3 if config.critique else 2), what)
    else:
        reasons = context_overflows(policy, [p.messages for p in prompts], tokens)
    return split_refused(prompts, reasons)


def _calls_per_prompt(config: SLConfig) -> int:
    return 1 + config.num_revisions * (2 if config.critique else 1)


def _chunk_records(
    constitution: Constitution,
    config: SLConfig,
    seed: int,
    policy: LanguageModel,
    chunk: tuple[str, list[PromptRecord]],
    advance: Advance,
) -> Output:
    """One chunk's records: red-team prompts critiqued and revised, helpfulness prompts answered plainly."""
    kind, prompts = chunk
    if kind == "red_team":
        return Output(revise(policy, constitution, prompts, config, seed, on_generated=advance))
    records = answer(policy, prompts, config, constitution, seed)
    advance(len(prompts))
    return Output(records)


def generate(
    stage: StageFolder,
    policy: LanguageModel,
    constitution: Constitution,
    config: SLConfig,
    seed: int,
    engine: ChunkEngine | None = None,
) -> dict[str, int]:
    """The SL generation stage: resumable, writing a chunk of records at a time to `stage`. Returns its counts.

    `policy` checks which prompts fit its context; `engine` does the chunks (default: `policy`, in this process).
    """
    constitution = constitution.restricted_to(config.num_principles, random.Random(seed))
    done = stage.done_ids(SLRecord)
    records_out, rejected_out = stage.writers()
    work: list[tuple[str, list[PromptRecord]]] = []
    for kind, source in (("red_team", config.red_team_prompts), ("helpful", config.helpful_prompts)):
        if source is None:
            continue
        accepted, rejected = load_prompts(source, config.prompt_column, config.max_prompt_chars)
        accepted = accepted[: config.max_prompts]
        candidates = [p for p in accepted if p.id not in done]
        todo, too_long = fit_context(policy, constitution, candidates, kind, config)
        require_fitting(source, todo, too_long, answered=len(candidates) < len(accepted))
        rejected_out.write(r for r in rejected if r.id not in done)
        rejected_out.write(too_long)
        work.append((kind, todo))
    total = sum(len(items) * (_calls_per_prompt(config) if kind == "red_team" else 1) for kind, items in work)
    chunks = [
        (kind, items[start : start + config.chunk_size])
        for kind, items in work
        for start in range(0, len(items), config.chunk_size)
    ]
    try:
        with progress_bar() as bar:
            task = bar.add_task("SL-CAI generate", total=total, unit="gen")
            do_chunk = functools.partial(_chunk_records, constitution, config, seed)
            engine = engine or LocalEngine(policy)
            engine.run(chunks, do_chunk, stage, (records_out, rejected_out), lambda n: bar.advance(task, n))
    finally:
        records_out.close()
        rejected_out.close()
    return {"records": len(stage.records(SLRecord)), "rejected": len(stage.rejected())}
