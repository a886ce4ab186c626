"""Splits with no leaks: train / calibration / test by group, exact and near duplicates removed across splits.

A group is one request and everything made from it (its paraphrases, wrapped and encoded versions, the answers to
it), so all of them land in the same split. Near duplicates are found with sentence embeddings (the embedded
MiniLM): when two groups in different splits hold texts at least `threshold` apart in cosine similarity, the one in
the split that matters less goes (a training group before a calibration one, a calibration group before a test
one), so no test item has a near twin in training. Groups near an item of a held-out evaluation set are removed
wherever they are. Every removal comes back with its reason, to be kept as a rejected record.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from constitutional.classifiers.records import Split
from constitutional.models.sentence import Embedder

# Which split keeps its group when two splits share a near duplicate: the lower number.
_PRIORITY: dict[Split, int] = {"test": 0, "calibration": 1, "train": 2}


def normalise(text: str) -> str:
    """Text as exact-duplicate detection compares it: lower case, words only, single spaces."""
    return " ".join(re.findall(r"\w+", text.lower()))


def assign_split(group: str, seed: int, calibration_share: float, test_share: float) -> Split:
    """A group's split from a hash of the seed and its id: stable whatever other groups exist."""
    draw = int(hashlib.sha256(f"{seed}:{group}".encode()).hexdigest()[:12], 16) / 16**12
    if draw < test_share:
        return "test"
    if draw < test_share + calibration_share:
        return "calibration"
    return "train"


@dataclass
class SplitResult:
    splits: dict[str, Split] = field(default_factory=dict)  # kept group -> its split
    removed: dict[str, str] = field(default_factory=dict)  # removed group -> why


def split_groups(
    texts: dict[str, list[str]],
    seed: int,
    calibration_share: float,
    test_share: float,
    embedder: Embedder,
    threshold: float,
    holdout: Sequence[str] = (),
) -> SplitResult:
    """Assign every group (id -> its texts, in priority order: an earlier group wins an exact tie) a split, and
    remove the groups that would leak: exact duplicates of an earlier group or of a held-out item, near
    duplicates of a held-out item, and near duplicates of a group in a more important split."""
    result = SplitResult(splits={group: assign_split(group, seed, calibration_share, test_share) for group in texts})
    _remove_exact(texts, holdout, result)
    owners = [(group, text) for group in texts if group not in result.removed for text in texts[group]]
    if not owners:
        return _settle(result)
    vectors = np.asarray(embedder([text for _, text in owners]), dtype=float)
    if holdout:
        held = np.asarray(embedder(list(holdout)), dtype=float)
        nearest = (vectors @ held.T).max(axis=1)
        for (group, _), similarity in zip(owners, nearest, strict=True):
            if similarity >= threshold and group not in result.removed:
                result.removed[group] = f"near duplicate (cosine {similarity:.3f}) of a held-out evaluation item"
    _remove_cross_split(owners, vectors, threshold, result)
    return _settle(result)


def _remove_exact(texts: dict[str, list[str]], holdout: Sequence[str], result: SplitResult) -> None:
    held = {normalise(text) for text in holdout}
    first: dict[str, str] = {}
    for group, group_texts in texts.items():
        for text in group_texts:
            key = normalise(text)
            if key in held:
                result.removed[group] = "exact duplicate of a held-out evaluation item"
            elif first.get(key, group) != group:
                result.removed[group] = f"exact duplicate of {first[key]}"
            if group in result.removed:
                break
            first.setdefault(key, group)


def _remove_cross_split(
    owners: list[tuple[str, str]], vectors: np.ndarray, threshold: float, result: SplitResult
) -> None:
    """Most similar pairs first, so each removal is for the closest twin; a pair with a group already gone is
    no leak any more."""
    similarity = vectors @ vectors.T
    rows, cols = np.nonzero(np.triu(similarity >= threshold, k=1))
    for i, j in sorted(zip(rows.tolist(), cols.tolist(), strict=True), key=lambda p: -similarity[p]):
        (a, _), (b, _) = owners[i], owners[j]
        split_a, split_b = result.splits[a], result.splits[b]
        if a == b or split_a == split_b or a in result.removed or b in result.removed:
            continue
        keep, drop = (a, b) if _PRIORITY[split_a] < _PRIORITY[split_b] else (b, a)
        result.removed[drop] = (
            f"near duplicate (cosine {similarity[i, j]:.3f}) of {keep} in the {result.splits[keep]} split"
        )


def _settle(result: SplitResult) -> SplitResult:
    for group in result.removed:
        result.splits.pop(group, None)
    return result
