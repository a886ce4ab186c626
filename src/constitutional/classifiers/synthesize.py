"""The generation stage of the synthetic data: the pool of requests, answers and paraphrases a classifier
constitution yields, and the judge's reading of a sample of them. `assemble` turns the pool into examples.

1. Requests. The constitution's own examples are kept as written; general helpful prompts join the benign pool;
   the generator continues, for every category, a numbered list seeded with that category's examples.
2. Answers and paraphrases. The generator answers some requests of each category (a restricted request both
   complied with and refused; any other just helped), with the answer begun for it; answers general prompts as a
   chat assistant does (everyday traffic, which the output classifier must let through); and rewords a share.
3. Judging. The judge reads a sample of these items (`relabel`).

Every model call is a resumable record (`roles`); the pool is rebuilt from those records deterministically, so the
assembly stage can be redone (other augmentations, other splits) without calling a model again.
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
from constitutional.classifiers.records import ClassifierExample, Provenance
from constitutional.engine import ChunkEngine, LocalEngine
from constitutional.models.base import HUMAN_TURN, LanguageModel, SamplingParams, uses_chat
from constitutional.progress import progress_bar
from constitutional.prompts import (
    CLF_ANSWER_LEADS,
    clf_answer_prompt,
    clf_requests_prompt,
    paraphrase_prompt,
)
from constitutional.sources import load_prompts
from constitutional.store import StageFolder

WRITTEN = relabel.WRITTEN
CHAT = "chat"  # a general prompt answered through the generator's chat template, as deployed models answer
TRANSCRIPT = "transcript"  # the same without a chat template: the plain transcript, no lead
JUDGEMENTS = "judgements"  # the judge's records, in a folder of the generation stage's own


class DataConfig(BaseModel):
    """How much synthetic data to make and judge (the generation stage: `GENERATION_FIELDS`), and how to augment
    and split it (the assembly stage: every other field)."""

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
    general_answers: int | None = Field(
        default=None,
        ge=0,
        description="General prompts the generator answers as a chat assistant (benign answers like everyday "
        "traffic, for the output classifier); null: all of them.",
    )
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
    augment_copies: int = Field(
        default=1, ge=1, description="Distinct transforms applied to each augmented request, one example each."
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


# The fields the generation stage reads; the assembly stage reads the rest.
GENERATION_FIELDS = frozenset(
    {
        "rounds",
        "few_shot",
        "requests_per_call",
        "request_tokens",
        "general_prompts",
        "max_general",
        "general_answers",
        "answers_per_category",
        "paraphrase_share",
        "judge_share",
        "chunk_size",
        "sampling",
    }
)


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
    """The requests of each category the generator answers, drawn by seed: `answers_per_category` of them, and
    `general_answers` of the general prompts."""
    chosen = []
    for category in dict.fromkeys(r.category for r in requests):
        members = [r for r in requests if r.category == category]
        wanted = config.answers_per_category
        if category == GENERAL:
            wanted = len(members) if config.general_answers is None else config.general_answers
        chosen += _rng(seed, category, "answers").sample(members, min(wanted, len(members)))
    return chosen


def _modes(request: Request) -> tuple[str, ...]:
    """How a request is answered: a restricted one both complied with and refused, a permitted one helped with, a
    general one as a chat assistant answers everyday traffic (no lead: what a guarded model sends)."""
    if request.label:
        return ("comply", "refuse")
    return (CHAT,) if request.category == GENERAL else ("help",)


def _answer_task(request: Request, mode: str, chat: bool, seed: int) -> roles.Task:
    """The call that answers `request` in `mode`: begun with a lead drawn by seed, or (CHAT) as plain chat."""
    task_id = f"{request.id}>{mode}"
    conversation = [{"role": "user", "content": request.text}]
    if mode == CHAT:
        prompt, template = (conversation, CHAT) if chat else (clf_answer_prompt(conversation, ""), TRANSCRIPT)
    else:
        number = _rng(seed, task_id, "lead").randrange(len(CLF_ANSWER_LEADS[mode]))
        prompt = clf_answer_prompt(conversation, CLF_ANSWER_LEADS[mode][number])
        template = f"CLF_ANSWER_LEADS.{mode}.{number}"
    return roles.Task(task_id, "answer", request.category, template, prompt)


def followup_tasks(requests: Sequence[Request], config: DataConfig, seed: int, chat: bool) -> list[roles.Task]:
    """The answers and paraphrases to ask for; `chat`: the generator reads chat messages (otherwise transcripts)."""
    tasks = [_answer_task(r, mode, chat, seed) for r in answered(requests, config, seed) for mode in _modes(r)]
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


Item = tuple[str, ClassifierExample, str]  # (group: the request it came from, the example, the request's text)


def plain_items(requests: Sequence[Request], generations: dict[str, roles.Generation], seed: int) -> list[Item]:
    """Every request, its paraphrase, and every answer the generator wrote: the items before augmentation."""
    by_id = {r.id: r for r in requests}
    found: list[Item] = []
    for request in requests:
        provenance = Provenance(generator=request.generator, template=request.template, seed=seed)
        found.append((request.id, _example(request.id, request, provenance), request.text))
        made = generations.get(f"{request.id}~{augment.PARAPHRASE}")
        reworded = augment.read_paraphrase(made.output) if made else ""
        if made and len(reworded.split()) >= 3 and dedupe.normalise(reworded) != dedupe.normalise(request.text):
            chain = [augment.PARAPHRASE]
            provenance = Provenance(generator=made.model, template=made.template, augmentations=chain, seed=seed)
            example = _example(made.id, request, provenance, messages=[{"role": "user", "content": reworded}])
            found.append((request.id, example, reworded))
    for made in sorted(generations.values(), key=lambda g: g.id):
        if made.purpose != "answer" or not made.output.strip():
            continue
        request_id, mode = made.id.rsplit(">", 1)
        request = by_id[request_id]
        lead = "" if mode == CHAT else CLF_ANSWER_LEADS[mode][int(made.template.rsplit(".", 1)[1])]
        answer = f"{lead} {made.output.strip()}" if lead else made.output.strip()
        harmful = mode == "comply"
        provenance = Provenance(generator=made.model, template=made.template, seed=seed)
        fields = {"answer": answer, "label": int(harmful), "harmful_from": 0 if harmful else None}
        found.append((request.id, _example(made.id, request, provenance, **fields), request.text))
    return found


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


@dataclass
class Pool:
    """What the generation stage made, rebuilt from its records."""

    requests: list[Request]
    items: list[Item]
    judgements: dict[str, roles.Judgement]


def _pool(constitution, config: DataConfig, seed: int, generations: dict[str, roles.Generation]) -> list[Request]:
    written = written_requests(constitution, config)
    taken = {dedupe.normalise(r.text) for r in written}
    return written + generated_requests(
        generations, request_tasks(constitution, config, seed), constitution, config, taken
    )


def generate(
    folder: StageFolder,
    generator: LanguageModel,
    judge: LanguageModel,
    constitution: ClassifierConstitution,
    config: DataConfig,
    seed: int,
    engines: tuple[ChunkEngine, ChunkEngine] | None = None,
) -> dict[str, Any]:
    """Make the pool into `folder` (resumable): requests, then answers and paraphrases, then the judge's readings.
    `engines` do the generator's and the judge's chunks (default: the models themselves, in this process)."""
    params = _params(config)
    writes, reads = engines or (LocalEngine(generator), LocalEngine(judge))
    with progress_bar() as bar:
        tasks = request_tasks(constitution, config, seed)
        step = bar.add_task("requests", total=len(tasks), unit="calls")
        made = roles.generate(folder, generator, tasks, params, seed, config.chunk_size, _advance(bar, step), writes)
        requests = _pool(constitution, config, seed, made)
        tasks = followup_tasks(requests, config, seed, uses_chat(generator))
        step = bar.add_task("answers, paraphrases", total=len(tasks), unit="calls")
        made = roles.generate(folder, generator, tasks, params, seed, config.chunk_size, _advance(bar, step), writes)
        questions = relabel.judge_tasks(plain_items(requests, made, seed), constitution, config.judge_share, seed)
        step = bar.add_task("judge", total=len(questions), unit="items")
        judgements = StageFolder(folder.dir / JUDGEMENTS)
        roles.judge(judgements, judge, questions, "CLF_JUDGE_TEMPLATE", config.chunk_size, _advance(bar, step), reads)
    return {
        "written_requests": sum(r.generator == WRITTEN for r in requests),
        "generated_requests": sum(r.generator != WRITTEN for r in requests),
        "generator_calls": len(made),
        "judged": len(questions),
    }


def read_pool(folder: StageFolder, constitution: ClassifierConstitution, config: DataConfig, seed: int) -> Pool:
    """The pool a complete generation stage wrote to `folder`, without calling a model."""
    made = {g.id: g for g in folder.records(roles.Generation)}
    requests = _pool(constitution, config, seed, made)
    judgements = {j.id: j for j in StageFolder(folder.dir / JUDGEMENTS).records(roles.Judgement)}
    return Pool(requests, plain_items(requests, made, seed), judgements)


def _advance(bar, task):
    return lambda count: bar.advance(task, count)
