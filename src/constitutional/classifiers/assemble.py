"""The assembly stage of the synthetic data: the generation stage's pool -> augmented, judged, split examples.

1. Augmentations. A share of the requests (paraphrases included) also appear wrapped, encoded or split over turns,
   each in `augment_copies` distinct ways; a share of the complying answers also appear after a harmless opening,
   their harm starting part-way.
2. Contested items. Where the judge disagreed with an item's label (at its cut-off, `relabel`), the item and
   everything made from it are marked contested; training leaves them out by default.
3. Splits. Each request with everything made from it goes to one split; duplicates that would leak across splits,
   or into a held-out evaluation set, are removed and kept as rejected records with the reason (`dedupe`).

No model is called here apart from the sentence embedder, so changing these settings redoes seconds of work.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from constitutional.classifiers import augment, dedupe, relabel
from constitutional.classifiers.labelled import load_labelled, texts_of
from constitutional.classifiers.records import ClassifierExample
from constitutional.classifiers.synthesize import DataConfig, Item, Pool
from constitutional.models.sentence import Embedder
from constitutional.records import RejectedRecord
from constitutional.store import StageFolder

DELAYED = "delayed_onset"


def _rng(seed: int, item: str, purpose: str) -> random.Random:
    return random.Random(f"{seed}:{item}:{purpose}")


def augmented(items: Sequence[Item], benign: Sequence[str], config: DataConfig, seed: int) -> list[Item]:
    """Wrapped, encoded or split versions of the prompt-only items, in `augment_copies` distinct ways each."""
    found: list[Item] = []
    for group, example, text in items:
        rng = _rng(seed, example.id, "augment")
        if example.answer is not None or not config.augmentations or rng.random() >= config.augment_share:
            continue
        for name in rng.sample(config.augmentations, min(config.augment_copies, len(config.augmentations))):
            chain = [*example.provenance.augmentations, name]
            wrapped = example.model_copy(
                update={
                    "id": f"{example.id}~{name}",
                    "messages": augment.augment(name, text, seed, example.id, benign),
                    "wrapper": name,
                    "provenance": example.provenance.model_copy(update={"augmentations": chain}),
                }
            )
            found.append((group, wrapped, text))
    return found


def delayed(items: Sequence[Item], config: DataConfig, seed: int) -> list[Item]:
    """Complying answers again after a harmless opening, `harmful_from` where the original answer begins."""
    found: list[Item] = []
    for group, example, text in items:
        if example.label != 1 or example.answer is None:
            continue
        if _rng(seed, example.id, DELAYED).random() >= config.delayed_onset_share:
            continue
        answer, start = augment.delayed_onset(example.answer, seed, example.id)
        provenance = example.provenance.model_copy(update={"augmentations": [DELAYED]})
        update = {"id": f"{example.id}~{DELAYED}", "answer": answer, "harmful_from": start, "provenance": provenance}
        found.append((group, example.model_copy(update=update), text))
    return found


def assemble(folder: StageFolder, pool: Pool, config: DataConfig, seed: int, embedder: Embedder) -> dict[str, Any]:
    """Write the examples of `pool` into `folder`; returns the counts for the manifest."""
    benign = sorted(r.text for r in pool.requests if r.label == 0)
    items = [*pool.items, *augmented(pool.items, benign, config, seed), *delayed(pool.items, config, seed)]
    items, counts = relabel.apply_judgements(items, pool.judgements)
    groups: dict[str, list[str]] = {}
    for group, _, text in items:
        texts = groups.setdefault(group, [])
        if text not in texts:
            texts.append(text)
    holdout = [text for source in config.holdout for text in texts_of(load_labelled(source))]
    split = dedupe.split_groups(
        groups, seed, config.calibration_share, config.test_share, embedder, config.near_duplicate, holdout
    )
    _write(folder, items, split)
    return _summary(folder, counts, len(split.removed))


def _write(folder: StageFolder, items: Sequence[Item], split: dedupe.SplitResult) -> None:
    """The final examples and the removed ones, skipping what a previous run already wrote."""
    done = folder.done_ids(ClassifierExample)
    records, rejected = folder.writers()
    try:
        kept = [e.model_copy(update={"split": split.splits[g]}) for g, e, _ in items if g in split.splits]
        records.write(e for e in kept if e.id not in done)
        rejected.write(
            RejectedRecord(id=e.id, reason=split.removed[g], source="dedupe")
            for g, e, _ in items
            if g in split.removed and e.id not in done
        )
    finally:
        records.close()
        rejected.close()


def _summary(folder: StageFolder, counts: dict[str, Any], removed_groups: int) -> dict[str, Any]:
    examples = folder.records(ClassifierExample)
    contested = sum(e.contested for e in examples)
    summary: dict[str, Any] = {
        "examples": len(examples),
        "input_examples": sum(e.answer is None for e in examples),
        "output_examples": sum(e.answer is not None for e in examples),
        "restricted": sum(e.label for e in examples),
        **{f"{name}_examples": sum(e.split == name for e in examples) for name in ("train", "calibration", "test")},
        "contested": contested,
        "contested_share": round(contested / max(1, len(examples)), 4),
        "removed_requests": removed_groups,
        "removed_examples": len(folder.rejected()),
        **counts,
    }
    if counts["written_judged"]:
        # Measured on the items the cut-off was set on: an upper bound on the judge's accuracy elsewhere.
        summary["judge_agreement_on_written"] = round(counts["written_agreed"] / counts["written_judged"], 4)
    return summary
