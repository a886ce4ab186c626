"""The judge's re-labelling of the synthetic data: which items it reads, where it draws the line, and which items
its verdict marks contested (kept in the data, left out of training by default).

Only unaugmented items are read; a wrapped, encoded or delayed version shares the verdict on the item it was made
from. Written items (the constitution's examples, general prompts) are read too, but only to set the judge's
cut-off and to measure it: they are never marked.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from typing import Any

from constitutional.classifiers import augment, roles
from constitutional.classifiers.constitution import ClassifierConstitution
from constitutional.classifiers.records import ClassifierExample
from constitutional.prompts import clf_judge_question

WRITTEN = "written"  # the generator named by hand-written items' provenance


def judge_tasks(
    items: Sequence[tuple[str, ClassifierExample, str]], constitution: ClassifierConstitution, share: float, seed: int
) -> list[roles.JudgeTask]:
    """A `share` of the unaugmented items, drawn by seed (augmented ones share their source's verdict)."""
    restricted = [(c.id.replace("_", " "), " ".join(c.definition.split())) for c in constitution.restricted]
    permitted = [c.id.replace("_", " ") for c in constitution.permitted]
    tasks = []
    for _, example, _ in items:
        derived = example.wrapper != "plain" or "delayed_onset" in example.provenance.augmentations
        if derived or random.Random(f"{seed}:{example.id}:judge").random() >= share:
            continue
        question = clf_judge_question(restricted, permitted, example.messages, example.answer)
        tasks.append(roles.JudgeTask(example.id, "answer" if example.answer is not None else "request", question))
    return tasks


def source_id(example: ClassifierExample) -> str:
    """The unaugmented item an example was made from (itself if none): whose judgement it shares."""
    for name in (*augment.AUGMENTATIONS, "delayed_onset"):
        if example.id.endswith(f"~{name}"):
            return example.id.removesuffix(f"~{name}")
    return example.id


def judge_cutoff(items: Sequence[tuple[str, ClassifierExample, str]], judgements: dict[str, roles.Judgement]) -> float:
    """The judge's P(restricted) above which it calls an item restricted, set on the written items it read (whose
    labels are known) for the best balanced accuracy; 0.5 without written items of both labels.

    Small judges say Yes (or No) to almost everything, so at a fixed 0.5 their verdicts would mark items contested
    by their bias rather than by what the items say.
    """
    known = [
        (judgements[e.id].p_restricted, e.label)
        for _, e, _ in items
        if e.provenance.generator == WRITTEN and e.id in judgements
    ]
    if len({label for _, label in known}) < 2:
        return 0.5
    values = sorted({p for p, _ in known})
    candidates = [0.5] + [(a + b) / 2 for a, b in itertools.pairwise(values)]

    def balanced_accuracy(cut: float) -> float:
        return (
            sum(
                sum((p >= cut) == bool(label) for p, y in known if y == label) / sum(y == label for _, y in known)
                for label in (0, 1)
            )
            / 2
        )

    return max(candidates, key=lambda cut: (balanced_accuracy(cut), -abs(cut - 0.5)))


def apply_judgements(
    items: list[tuple[str, ClassifierExample, str]], judgements: dict[str, roles.Judgement]
) -> tuple[list[tuple[str, ClassifierExample, str]], dict[str, Any]]:
    """Mark generated items the judge disagrees with (at its cut-off) as contested; count how often it agrees with
    the labels of the written items, which are never marked."""
    cutoff = judge_cutoff(items, judgements)
    counts: dict[str, Any] = {"judged": 0, "judge_disagreed": 0, "written_judged": 0, "written_agreed": 0}
    marked = []
    for group, example, text in items:
        verdict = judgements.get(source_id(example))
        if verdict is not None:
            disagrees = (verdict.p_restricted >= cutoff) != bool(example.label)
            written = example.provenance.generator == WRITTEN
            update: dict[str, Any] = {"provenance": example.provenance.model_copy(update={"judge": verdict.model})}
            if not written:
                update["contested"] = disagrees
            example = example.model_copy(update=update)
            if example.id == verdict.id:
                counts["written_judged" if written else "judged"] += 1
                counts["written_agreed"] += written and not disagrees
                counts["judge_disagreed"] += not written and disagrees
        marked.append((group, example, text))
    counts["judge_cutoff"] = round(cutoff, 4)
    return marked, counts
