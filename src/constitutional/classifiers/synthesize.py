"""The synthetic data stage: a classifier constitution -> labelled, augmented, split examples with provenance.

1. Requests. The constitution's own examples are kept as written; general helpful prompts join the benign pool;
   the generator continues, for every category, a numbered list seeded with that category's examples.
2. Answers and paraphrases. The generator answers some requests of each category (a restricted request both
   complied with and refused; any other just helped), with the answer begun for it; and rewords a share of them.
3. Augmentations. A share of the requests (paraphrases included) also appear wrapped, encoded or split over turns;
   a share of the complying answers also appear after a harmless opening, their harm starting part-way.
4. Judging. The judge reads a sample; a generated item it disagrees with is kept, marked contested (training
   leaves contested items out by default). Written items are judged too, but only to measure the judge.
5. Splits. Each request with everything made from it goes to one split; duplicates that would leak across splits,
   or into a held-out evaluation set, are removed and kept as rejected records with the reason.

Model calls are resumable records (`roles`); the examples are assembled from them deterministically at the end.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from constitutional.classifiers import augment, dedupe, relabel, roles
from constitutional.classifiers.constitution import GENERAL, ClassifierConstitution
from constitutional.classifiers.labelled import load_labelled, texts_of
from constitutional.classifiers.records import ClassifierExample, Provenance
from constitutional.models.base import HUMAN_TURN, LanguageModel, SamplingParams
from constitutional.models.sentence import Embedder
from constitutional.progress import progress_bar
from constitutional.prompts import (
    CLF_ANSWER_LEADS,
    clf_answer_prompt,
    clf_requests_prompt,
    paraphrase_prompt,
)
from constitutional.records import RejectedRecord
from constitutional.sources import load_prompts
from constitutional.store import StageFolder

WRITTEN = relabel.WRITTEN


class DataConfig(BaseModel):
    """How much synthetic data to make, how to augment and judge it, and how to split it."""

    model_config = ConfigDict(extra="forbid")

    rounds: int = Field(default=2, ge=0, description="Generator calls per category for new requests (0: none).")
    few_shot: int = Field(default=4, ge=1, description="Constitution examples shown per call, drawn by seed.")
    requests_per_call: int = Field(default=3, ge=1, description="New requests kept from each call's list.")
    request_tokens: int = Field(default=64, ge=8, description="Tokens per list continuation and per paraphrase.")
    general_prompts: str | None = Field(
        default="builtin:helpful",
        description="Ordinary requests for the benign pool (category 'general'); null: none.",
    )
    max_general: int | None = Field(default=None, ge=1, description="Use only the first N general prompts.")
    answers_per_category: int = Field(
        default=4, ge=0, description="Requests per category answered (restricted: complied with and refused)."
    )
    delayed_onset_share: float = Field(
        default=0.5, ge=0, le=1, description="Share of complying answers also given a harmless opening."
    )
    paraphrase_share: float = Field(default=0.2, ge=0, le=1, description="Share of requests reworded by the model.")
    augment_share: float = Field(
        default=0.5, ge=0, le=1, description="Share of requests that also appear wrapped, encoded or split."
    )
    augmentations: list[str] = Field(
        default_factory=lambda: list(augment.AUGMENTATIONS), description="Transforms drawn from, by name."
    )
    judge_share: float = Field(default=0.3, ge=0, le=1, description="Share of items the judge re-labels.")
    calibration_share: float = Field(default=0.2, gt=0, lt=1, description="Share of requests for calibration.")
    test_share: float = Field(default=0.2, ge=0, lt=1, description="Share of requests held out for testing.")
    near_duplicate: float = Field(
        default=0.9, gt=0, le=1, description="Cosine similarity (MiniLM) at which two requests are duplicates."
    )
    holdout: list[str] = Field(
        default_factory=lambda: ["builtin:clf-eval-inputs", "builtin:clf-eval-outputs"],
        description="Evaluation sets no synthetic request may duplicate (JSONL/CSV or builtin:NAME).",
    )
    chunk_size: int = Field(default=18, ge=1, description="Model calls per batch, and the unit of resume.")
    sampling: SamplingParams = Field(
        default_factory=SamplingParams,
        description="Generator sampling; max_new_tokens bounds each answer (stop and seed are set per call).",
    )

    @field_validator("holdout")
    @classmethod
    def _each_once(cls, sources: list[str]) -> list[str]:
        return once(sources)

    @field_validator("augmentations")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        unknown = [name for name in names if name not in augment.AUGMENTATIONS]
        if unknown:
            raise ValueError(f"unknown augmentation(s) {unknown}; known: {', '.join(augment.AUGMENTATIONS)}")
        return names


def once(sources: list[str]) -> list[str]:
    """A list of labelled sets, each named once."""
    repeated = sorted({source for source in sources if sources.count(source) > 1})
    if repeated:
        raise ValueError(f"{repeated} named more than once")
    return sources


@dataclass(frozen=True)
class Request:
    """A base request: the group everything made from it belongs to."""

    id: str
    text: str
    category: str
    label: Literal[0, 1]
    generator: str
    template: str


def _rng(seed: int, item: str, purpose: str) -> random.Random:
    return random.Random(f"{seed}:{item}:{purpose}")


# ---- 1. requests ---------------------------------------------------------------------------------------------


def written_requests(constitution: ClassifierConstitution, config: DataConfig) -> list[Request]:
    """The constitution's examples, then the general prompts: kept as written, never judged into contested."""
    found = [
        Request(f"{c.id}.w{k}", text, c.id, constitution.label(c.id), WRITTEN, f"constitution:{constitution.tag}")
        for c in constitution.categories
        for k, text in enumerate(c.examples)
    ]
    if config.general_prompts is not None:
        prompts, _ = load_prompts(config.general_prompts)
        for prompt in prompts[: config.max_general]:
            safe_id = re.sub(r"[^\w.-]", "_", prompt.id)
            text = prompt.messages[-1]["content"]
            found.append(Request(f"{GENERAL}.{safe_id}", text, GENERAL, 0, WRITTEN, config.general_prompts))
    return found


def request_tasks(constitution: ClassifierConstitution, config: DataConfig, seed: int) -> list[roles.Task]:
    tasks = []
    for category in constitution.categories:
        for round_number in range(config.rounds):
            rng = _rng(seed, category.id, f"few-shot-{round_number}")
            shown = rng.sample(category.examples, min(config.few_shot, len(category.examples)))
            topic = category.id.replace("_", " ")
            prompt = clf_requests_prompt(topic, " ".join(category.definition.split()), shown)
            tasks.append(
                roles.Task(f"{category.id}.g{round_number}", "requests", category.id, "CLF_REQUESTS_TEMPLATE", prompt)
            )
    return tasks


def parse_requests(output: str, limit: int) -> list[str]:
    """Complete lines of a numbered-list continuation, numbers stripped: a line cut off mid-sentence (no closing
    punctuation) or of fewer than four words is dropped."""
    found = []
    for line in output.split("\n"):
        text = re.sub(r"^\s*\d+\s*[.)]\s*", "", line).strip()
        if len(text.split()) >= 4 and text[-1] in "?.!)" and len(text) <= 400:
            found.append(text)
    return found[:limit]


def generated_requests(
    generations: dict[str, roles.Generation], tasks: Sequence[roles.Task], constitution, config: DataConfig, taken: set
) -> list[Request]:
    found = []
    for task in tasks:
        made = generations[task.id]
        for k, text in enumerate(parse_requests(made.output, config.requests_per_call)):
            if dedupe.normalise(text) in taken:
                continue
            taken.add(dedupe.normalise(text))
            label = constitution.label(task.category)
            found.append(Request(f"{task.id}-{k}", text, task.category, label, made.model, task.template))
    return found


# ---- 2. answers and paraphrases --------------------------------------------------------------------------------


def answered(requests: Sequence[Request], config: DataConfig, seed: int) -> list[Request]:
    """The requests of each category the generator answers: `answers_per_category` of them, drawn by seed."""
    chosen = []
    for category in dict.fromkeys(r.category for r in requests):
        members = [r for r in requests if r.category == category]
        chosen += _rng(seed, category, "answers").sample(members, min(config.answers_per_category, len(members)))
    return chosen


def followup_tasks(requests: Sequence[Request], config: DataConfig, seed: int) -> list[roles.Task]:
    tasks = []
    for request in answered(requests, config, seed):
        for mode in ("comply", "refuse") if request.label else ("help",):
            task_id = f"{request.id}>{mode}"
            number = _rng(seed, task_id, "lead").randrange(len(CLF_ANSWER_LEADS[mode]))
            prompt = clf_answer_prompt([{"role": "user", "content": request.text}], CLF_ANSWER_LEADS[mode][number])
            template = f"CLF_ANSWER_LEADS.{mode}.{number}"
            tasks.append(roles.Task(task_id, "answer", request.category, template, prompt))
    for request in requests:
        if _rng(seed, request.id, "paraphrase").random() < config.paraphrase_share:
            prompt = paraphrase_prompt(request.text)
            task_id = f"{request.id}~{augment.PARAPHRASE}"
            tasks.append(roles.Task(task_id, "paraphrase", request.category, "CLF_PARAPHRASE_TEMPLATE", prompt))
    return tasks


# ---- 3. examples -------------------------------------------------------------------------------------------------


def _example(example_id: str, request: Request, provenance: Provenance, **fields: Any) -> ClassifierExample:
    messages = fields.pop("messages", [{"role": "user", "content": request.text}])
    return ClassifierExample(
        id=example_id,
        messages=messages,
        label=fields.pop("label", request.label),
        category=request.category,
        provenance=provenance,
        **fields,
    )


def input_examples(
    requests: Sequence[Request], generations: dict[str, roles.Generation], config: DataConfig, seed: int
) -> list[tuple[str, ClassifierExample, str]]:
    """(group, example, text) for every request, its paraphrase, and the augmented versions of both."""
    plain = []
    for request in requests:
        provenance = Provenance(generator=request.generator, template=request.template, seed=seed)
        plain.append((request, _example(request.id, request, provenance), request.text))
        made = generations.get(f"{request.id}~{augment.PARAPHRASE}")
        reworded = augment.read_paraphrase(made.output) if made else ""
        if made and len(reworded.split()) >= 3 and dedupe.normalise(reworded) != dedupe.normalise(request.text):
            provenance = Provenance(
                generator=made.model, template=made.template, augmentations=[augment.PARAPHRASE], seed=seed
            )
            example = _example(made.id, request, provenance, messages=[{"role": "user", "content": reworded}])
            plain.append((request, example, reworded))
    benign = sorted(r.text for r in requests if r.label == 0)
    found = [(request.id, example, text) for request, example, text in plain]
    for request, example, text in plain:
        rng = _rng(seed, example.id, "augment")
        if not config.augmentations or rng.random() >= config.augment_share:
            continue
        name = rng.choice(config.augmentations)
        provenance = example.provenance.model_copy(update={"augmentations": [*example.provenance.augmentations, name]})
        messages = augment.augment(name, text, seed, example.id, benign)
        wrapped = _example(f"{example.id}~{name}", request, provenance, messages=messages, wrapper=name)
        found.append((request.id, wrapped, text))
    return found


def output_examples(
    requests: Sequence[Request], generations: dict[str, roles.Generation], config: DataConfig, seed: int
) -> list[tuple[str, ClassifierExample, str]]:
    """(group, example, text) for every answer the generator wrote, and the delayed-onset versions."""
    by_id = {r.id: r for r in requests}
    found = []
    for made in generations.values():
        if made.purpose != "answer" or not made.output.strip():
            continue
        request_id, mode = made.id.rsplit(">", 1)
        request = by_id[request_id]
        lead = CLF_ANSWER_LEADS[mode][int(made.template.rsplit(".", 1)[1])]
        answer = f"{lead} {made.output.strip()}" if lead else made.output.strip()
        harmful = mode == "comply"
        provenance = Provenance(generator=made.model, template=made.template, seed=seed)
        fields = {"answer": answer, "label": int(harmful), "harmful_from": 0 if harmful else None}
        found.append((request.id, _example(made.id, request, provenance, **fields), request.text))
        if harmful and _rng(seed, made.id, "delayed_onset").random() < config.delayed_onset_share:
            delayed, start = augment.delayed_onset(answer, seed, made.id)
            provenance = provenance.model_copy(update={"augmentations": ["delayed_onset"]})
            fields = {"answer": delayed, "label": 1, "harmful_from": start}
            found.append(
                (request.id, _example(f"{made.id}~delayed_onset", request, provenance, **fields), request.text)
            )
    return sorted(found, key=lambda item: item[1].id)


# ---- the stage -------------------------------------------------------------------------------------------------


def _params(config: DataConfig) -> dict[roles.Purpose, SamplingParams]:
    """Each kind of call ends where its template's format does: a list at a blank line, a paraphrase at the end of
    its line, an answer at the next turn."""
    short = {"max_new_tokens": config.request_tokens}
    return {
        "requests": config.sampling.model_copy(update={**short, "stop": ["\n\n"]}),
        "paraphrase": config.sampling.model_copy(update={**short, "stop": ["\n"]}),
        "answer": config.sampling.model_copy(update={"stop": [HUMAN_TURN, "\nHuman:", "\nUser:"]}),
    }


def synthesize(
    folder: StageFolder,
    generator: LanguageModel,
    judge: LanguageModel,
    constitution: ClassifierConstitution,
    config: DataConfig,
    seed: int,
    embedder: Embedder,
) -> dict[str, Any]:
    """Make, judge and split the examples into `folder` (resumable); returns the counts for the manifest."""
    generations_folder = StageFolder(folder.dir / "generations")
    judgements_folder = StageFolder(folder.dir / "judgements")
    holdout = [text for source in config.holdout for text in texts_of(load_labelled(source))]
    written = written_requests(constitution, config)
    params = _params(config)
    with progress_bar() as bar:
        tasks = request_tasks(constitution, config, seed)
        step = bar.add_task("requests", total=len(tasks), unit="calls")
        made = roles.generate(
            generations_folder, generator, tasks, params, seed, config.chunk_size, _advance(bar, step)
        )
        taken = {dedupe.normalise(r.text) for r in written}
        requests = written + generated_requests(made, tasks, constitution, config, taken)
        tasks = followup_tasks(requests, config, seed)
        step = bar.add_task("answers, paraphrases", total=len(tasks), unit="calls")
        made = roles.generate(
            generations_folder, generator, tasks, params, seed, config.chunk_size, _advance(bar, step)
        )
        items = input_examples(requests, made, config, seed) + output_examples(requests, made, config, seed)
        questions = relabel.judge_tasks(items, constitution, config.judge_share, seed)
        step = bar.add_task("judge", total=len(questions), unit="items")
        judged = roles.judge(
            judgements_folder, judge, questions, "CLF_JUDGE_TEMPLATE", config.chunk_size, _advance(bar, step)
        )
    items, counts = relabel.apply_judgements(items, judged)
    groups: dict[str, list[str]] = {}
    for group, _, text in items:
        groups.setdefault(group, [])
        if text not in groups[group]:
            groups[group].append(text)
    split = dedupe.split_groups(
        groups, seed, config.calibration_share, config.test_share, embedder, config.near_duplicate, holdout
    )
    _write(folder, items, split)
    return _summary(folder, requests, counts)


def _advance(bar, task):
    return lambda count: bar.advance(task, count)


def _write(folder: StageFolder, items, split: dedupe.SplitResult) -> None:
    """The final examples and the removed ones, skipping what a previous run already wrote."""
    done = folder.done_ids(ClassifierExample)
    records, rejected = folder.writers()
    try:
        kept = [e.model_copy(update={"split": split.splits[g]}) for g, e, _ in items if g in split.splits]
        records.write(e for e in kept if e.id not in done)
        removed = [
            RejectedRecord(id=e.id, reason=split.removed[g], source="dedupe")
            for g, e, _ in items
            if g in split.removed and e.id not in done
        ]
        rejected.write(removed)
    finally:
        records.close()
        rejected.close()


def _summary(folder: StageFolder, requests: Sequence[Request], counts: dict[str, Any]) -> dict[str, Any]:
    examples = folder.records(ClassifierExample)
    summary: dict[str, Any] = {
        "examples": len(examples),
        "input_examples": sum(e.answer is None for e in examples),
        "output_examples": sum(e.answer is not None for e in examples),
        "restricted": sum(e.label for e in examples),
        "written_requests": sum(r.generator == WRITTEN for r in requests),
        "generated_requests": sum(r.generator != WRITTEN for r in requests),
        "removed_duplicates": len(folder.rejected()),
        "contested": sum(e.contested for e in examples),
        "contested_share": round(sum(e.contested for e in examples) / max(1, len(examples)), 4),
        **{f"{name}_examples": sum(e.split == name for e in examples) for name in ("train", "calibration", "test")},
        **counts,
    }
    if counts["written_judged"]:
        # Measured on the items the cut-off was set on: an upper bound on the judge's accuracy elsewhere.
        summary["judge_agreement_on_written"] = round(counts["written_agreed"] / counts["written_judged"], 4)
    return summary
