"""The rl_label stage: every sampled pair labelled with the feedback model's preference, resumably.

Each pair becomes a comparison (comparison.py): principles and demonstrations drawn with a generator seeded
by the pair, so a label does not depend on chunking or on what a resumed run skipped. A chunk of pairs is
labelled with one batched call per step and written when done: the unit of resume. A pair whose chain of
thought cannot be used is kept as rejected, with the reason.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from constitutional.comparison import FeedbackConfig, draw_comparison, judge, pair_rng, principle_pool
from constitutional.constitution import Constitution
from constitutional.engine import Advance, ChunkEngine, LocalEngine, Output
from constitutional.errors import InputError
from constitutional.models.base import LanguageModel
from constitutional.progress import progress_bar
from constitutional.records import ComparisonRecord, LabelStats, PairRecord, RejectedRecord

if TYPE_CHECKING:
    from constitutional.store import StageFolder

HISTOGRAM_BINS = 10


def label_pairs(
    model: LanguageModel, constitution: Constitution, pairs: Sequence[PairRecord], config: FeedbackConfig, seed: int
) -> tuple[list[ComparisonRecord], list[RejectedRecord]]:
    """One chunk of pairs to comparison records (and rejections for CoTs that could not be used)."""
    comparisons = [
        draw_comparison(
            pair_rng(seed, pair.id),
            pair.prompt,
            pair.a,
            pair.b,
            principle_pool(pair.kind, constitution, config),
            constitution,
            config,
        )
        for pair in pairs
    ]
    records, rejected = [], []
    for pair, comparison, outcome in zip(pairs, comparisons, judge(model, comparisons, config), strict=True):
        if isinstance(outcome, str):
            rejected.append(
                RejectedRecord(
                    id=pair.id, reason=outcome, source=f"pair from {pair.model}, feedback model {model.name}"
                )
            )
            continue
        records.append(
            ComparisonRecord(
                id=pair.id,
                kind=pair.kind,
                prompt=pair.prompt,
                a=pair.a,
                b=pair.b,
                principles=[p.id for p in comparison.principles],
                p_a=outcome.p_a,
                p_a_first=outcome.p_a_first,
                p_a_second=outcome.p_a_second,
                logprobs=outcome.logprobs,
                cot=outcome.cot,
                clamped=outcome.clamped,
                constitution=constitution.tag,
                model=model.name,
                seed=seed,
            )
        )
    return records, rejected


def label_stats(records: Sequence[ComparisonRecord]) -> LabelStats:
    """How the labels came out: their spread, how many were clamped, and how much the option order mattered."""
    p_a = np.array([r.p_a for r in records], dtype=float)
    counts, _ = np.histogram(p_a, bins=HISTOGRAM_BINS, range=(0.0, 1.0))
    both = [r for r in records if r.p_a_second is not None]
    return LabelStats(
        labels=len(records),
        mean_p_a=float(p_a.mean()) if len(p_a) else None,
        p_a_histogram=[int(c) for c in counts],
        share_clamped=float(np.mean([r.clamped for r in records])) if records else None,
        position_flip_share=(
            float(np.mean([(r.p_a_first >= 0.5) != (r.p_a_second >= 0.5) for r in both])) if both else None
        ),
        mean_order_gap=float(np.mean([abs(r.p_a_first - r.p_a_second) for r in both])) if both else None,
    )


def _chunk_labels(
    constitution: Constitution,
    config: FeedbackConfig,
    seed: int,
    model: LanguageModel,
    chunk: list[PairRecord],
    advance: Advance,
) -> Output:
    records, rejected = label_pairs(model, constitution, chunk, config, seed)
    advance(len(chunk))
    return Output(records, rejected)


def label(
    out: StageFolder,
    pairs: list[PairRecord],
    model: LanguageModel,
    constitution: Constitution,
    config: FeedbackConfig,
    seed: int,
    engine: ChunkEngine | None = None,
) -> dict:
    """Label every pair not yet in `out`, a chunk at a time. Returns counts and the label statistics.

    `engine` does the chunks (default: `model`, in this process).
    """
    if not pairs:
        raise InputError(
            "there are no sampled pairs to label", hint="run `cai rl sample` with the same --config first"
        )
    done = out.done_ids(ComparisonRecord)
    todo = [pair for pair in pairs if pair.id not in done]
    records_out, rejected_out = out.writers()
    chunks = [todo[start : start + config.chunk_size] for start in range(0, len(todo), config.chunk_size)]
    try:
        with progress_bar() as bar:
            task = bar.add_task("AI feedback", total=len(todo), unit="pair")
            do_chunk = functools.partial(_chunk_labels, constitution, config, seed)
            engine = engine or LocalEngine(model)
            engine.run(chunks, do_chunk, out, (records_out, rejected_out), lambda n: bar.advance(task, n))
    finally:
        records_out.close()
        rejected_out.close()
    stats = label_stats(out.records(ComparisonRecord))
    return {"pairs": len(pairs), "rejected": len(out.rejected()), **stats.model_dump()}
