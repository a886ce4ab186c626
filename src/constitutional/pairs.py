"""RL-CAI, step one: two answers per prompt from the policy at temperature 1, for AI feedback to choose between.

Each chunk of prompts is one batched call with every prompt in it twice; sampling at temperature 1 makes the two
copies differ (in one batch each row draws its own tokens; copies split across batches get different batch seeds).
A pair the feedback model could learn nothing from (an empty answer, two identical answers) is kept as a rejected
record with the reason. A chunk's records are written when its call returns, so a kill loses at most that chunk.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from constitutional.engine import Advance, ChunkEngine, LocalEngine, Output
from constitutional.models.base import LanguageModel, SamplingParams, context_overflows
from constitutional.progress import progress_bar
from constitutional.records import PairRecord, PromptRecord, RejectedRecord
from constitutional.sources import load_prompts, require_fitting, split_refused
from constitutional.store import StageFolder


def _sampling_at_temperature_one() -> SamplingParams:
    # Temperature 1 as in the paper: the pair must show the policy's real spread of answers, not its mode.
    return SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=96)


class PairsConfig(BaseModel):
    """Sampling two answers per prompt from the policy, for AI feedback."""

    model_config = ConfigDict(extra="forbid")

    policy: Literal["sl_model", "policy"] = Field(
        default="sl_model",
        description="sl_model: the SL-CAI model in RUN_DIR/sl_model (models.policy when it does not exist yet); "
        "policy: always models.policy.",
    )
    red_team_prompts: str | None = Field(
        default="builtin:red-team", description="Path or builtin:NAME of red-team prompts; null for none."
    )
    helpful_prompts: str | None = Field(
        default="builtin:helpful", description="Path or builtin:NAME of helpfulness prompts; null for none."
    )
    prompt_column: str = Field(default="prompt", description="Column or field holding the prompt text.")
    max_prompts: int | None = Field(default=None, ge=1, description="Use only the first N prompts of each set.")
    max_prompt_chars: int = Field(
        default=2000,
        ge=1,
        description="Longer prompts are skipped with a reason, as are prompts that leave the policy's context window "
        "no room for sampling.max_new_tokens.",
    )
    chunk_size: int = Field(default=32, ge=1, description="Prompts per batched call (2x answers); the unit of resume.")
    sampling: SamplingParams = Field(default_factory=_sampling_at_temperature_one)


def _why_rejected(a: str, b: str) -> str | None:
    empty = [name for name, text in (("a", a), ("b", b)) if not text.strip()]
    if empty:
        return f"empty answer ({' and '.join(empty)}): nothing for the feedback model to judge"
    if a.strip() == b.strip():
        return "the two answers are identical: the pair carries no preference"
    return None


def sample_pairs(
    policy: LanguageModel,
    prompts: Sequence[PromptRecord],
    kind: Literal["red_team", "helpful"],
    constitution: str,
    params: SamplingParams,
    seed: int,
) -> tuple[list[PairRecord], list[RejectedRecord]]:
    """One batched call holding every prompt twice; returns the pairs and the refused ones."""
    conversations = [p.messages for p in prompts]
    answers = policy.generate([*conversations, *conversations], params)
    pairs, rejected = [], []
    for prompt, a, b in zip(prompts, answers[: len(prompts)], answers[len(prompts) :], strict=True):
        reason = _why_rejected(a, b)
        if reason:
            rejected.append(RejectedRecord(id=prompt.id, reason=reason, source=prompt.source))
            continue
        pairs.append(
            PairRecord(
                id=prompt.id,
                kind=kind,
                prompt=prompt.messages,
                a=a,
                b=b,
                constitution=constitution,
                model=policy.name,
                params=params.model_dump(),
                seed=seed,
            )
        )
    return pairs, rejected


def fit_context(
    policy: LanguageModel, prompts: Sequence[PromptRecord], max_new_tokens: int
) -> tuple[list[PromptRecord], list[RejectedRecord]]:
    """The prompts the policy can read and still answer at full length, and the others with the reason."""
    reasons = context_overflows(policy, [p.messages for p in prompts], max_new_tokens)
    return split_refused(prompts, reasons)


def _chunk_seed(seed: int, kind: str, first_id: str) -> int:
    """A seed per chunk that does not depend on what a resumed run skipped before it."""
    return seed + zlib.crc32(f"{kind}:{first_id}".encode()) % 1_000_000


def _chunk_pairs(
    constitution: str,
    sampling: SamplingParams,
    seed: int,
    policy: LanguageModel,
    chunk: tuple[Literal["red_team", "helpful"], list[PromptRecord]],
    advance: Advance,
) -> Output:
    kind, prompts = chunk
    params = sampling.model_copy(update={"seed": _chunk_seed(seed, kind, prompts[0].id)})
    pairs, refused = sample_pairs(policy, prompts, kind, constitution, params, seed)
    advance(len(prompts))
    return Output(pairs, refused)


def sample(
    stage: StageFolder,
    policy: LanguageModel,
    constitution: str,
    config: PairsConfig,
    seed: int,
    engine: ChunkEngine | None = None,
) -> dict:
    """The rl_sample stage: resumable, a chunk of pairs at a time. Returns counts and the model that answered.

    `policy` checks which prompts fit its context; `engine` does the chunks (default: `policy`, in this process).
    """
    done = stage.done_ids(PairRecord)
    records_out, rejected_out = stage.writers()
    work: list[tuple[Literal["red_team", "helpful"], list[PromptRecord]]] = []
    for kind, source in (("red_team", config.red_team_prompts), ("helpful", config.helpful_prompts)):
        if source is None:
            continue
        accepted, refused = load_prompts(source, config.prompt_column, config.max_prompt_chars)
        accepted = accepted[: config.max_prompts]
        candidates = [p for p in accepted if p.id not in done]
        todo, too_long = fit_context(policy, candidates, config.sampling.max_new_tokens)
        require_fitting(source, todo, too_long, answered=len(candidates) < len(accepted))
        rejected_out.write(r for r in refused if r.id not in done)
        rejected_out.write(too_long)
        work.append((kind, todo))
    chunks = [
        (kind, items[start : start + config.chunk_size])
        for kind, items in work
        for start in range(0, len(items), config.chunk_size)
    ]
    try:
        with progress_bar() as bar:
            task = bar.add_task("RL-CAI sample pairs", total=sum(len(items) for _, items in work), unit="pair")
            do_chunk = functools.partial(_chunk_pairs, constitution, config.sampling, seed)
            engine = engine or LocalEngine(policy)
            engine.run(chunks, do_chunk, stage, (records_out, rejected_out), lambda n: bar.advance(task, n))
    finally:
        records_out.close()
        rejected_out.close()
    return {"pairs": len(stage.records(PairRecord)), "rejected": len(stage.rejected()), "policy": policy.name}
