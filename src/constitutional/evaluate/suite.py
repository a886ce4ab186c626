"""Held-out evaluation: Elo, harmfulness, evasiveness, the revision curve.

Candidates (the base policy, the SL-CAI and RL-CAI models when they exist, any model the recipe names) answer
the same held-out prompts; the judge compares their answers pairwise under a helpfulness and a harmlessness
criterion, rates harmfulness and evasiveness, and scores the SL-CAI revisions; the preference model, when the
run has one, scores answers and revisions too. Every answer, judgement and rating is a record in
run_dir/evaluate/part-*.jsonl written a chunk at a time, so a rerun redoes only what is missing; the
conclusions go to run_dir/evaluate/summary.json (EvalSummary).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

from constitutional.constitution import Constitution
from constitutional.engine import Advance, ChunkEngine, LocalEngine, Output
from constitutional.evaluate.conclusions import answers_of, headline, summarize
from constitutional.evaluate.config import CRITERIA, EvalConfig
from constitutional.evaluate.evasiveness import judge_evasive
from constitutional.evaluate.harmfulness import rubric_ratings
from constitutional.evaluate.hhh import judge_quality
from constitutional.evaluate.judge import judge_prompts
from constitutional.evaluate.pairwise import compare
from constitutional.models.base import LanguageModel, Message, SamplingParams, context_overflows
from constitutional.models.spec import ModelSpec
from constitutional.progress import progress_bar
from constitutional.prompts import (
    EVASIVE_RUBRIC,
    HARMFULNESS_RUBRIC,
    HELPFULNESS_RUBRIC,
    JUDGE_PAIRWISE_LEAD,
    JUDGE_RATING_LEAD,
    judge_pairwise_question,
    judge_rating_question,
)
from constitutional.records import (
    EvalAnswer,
    EvalPairwise,
    EvalRating,
    EvalRecord,
    PromptRecord,
    RejectedRecord,
    SLRecord,
)
from constitutional.reward import PreferenceModel
from constitutional.sources import load_prompts
from constitutional.store import StageFolder

# What does a candidate's answering chunks, given its spec and its model loaded here (engine.open_engine's shape).
Engines = Callable[[ModelSpec, LanguageModel], AbstractContextManager[ChunkEngine]]


def _here(spec: ModelSpec, model: LanguageModel) -> AbstractContextManager[ChunkEngine]:
    return contextlib.nullcontext(LocalEngine(model))


# The label of the SL-CAI revision texts scored for the revision curve.
REVISIONS = "revisions"
# What a judge reads after its question: the scored option, a few tokens (" (A)", " 4", " Yes").
OPTION_ROOM = 8


def _answer_id(label: str, temperature: float, prompt_id: str) -> str:
    return f"answer:{label}:t{temperature:g}:{prompt_id}"


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class _Run:
    """One evaluate stage run: what is on disk already, where new records go, and the progress bar."""

    def __init__(self, stage: StageFolder, config: EvalConfig, bar):
        self.stage = stage
        self.config = config
        self.bar = bar
        self.entries: dict[str, Any] = {r.id: r.entry for r in self.stage.records(EvalRecord)}
        # Prompt ids left out (when loaded, or too long for a model's context): none of their answers is judged.
        self.rejected_ids = {r.id for r in self.stage.rejected()}
        self.writer, self.rejected = self.stage.writers()

    def write(self, items: Sequence[tuple[str, Any]]) -> None:
        self.writer.write(EvalRecord(id=i, entry=e) for i, e in items)
        self.entries.update(items)

    def refuse(self, prompts: Sequence[PromptRecord], reasons: Sequence[str | None], reader: str) -> None:
        """Leave out the prompts that have a reason, recorded as rejected with it."""
        refused = [
            RejectedRecord(id=p.id, reason=f"{p.source}: {reader}: {reason}", source=p.source)
            for p, reason in zip(prompts, reasons, strict=True)
            if reason is not None and p.id not in self.rejected_ids
        ]
        self.rejected.write(refused)
        self.rejected_ids |= {r.id for r in refused}

    def close(self) -> None:
        self.writer.close()
        self.rejected.close()

    def each_chunk(self, description: str, work: Sequence[Any], unit: str) -> Iterator[Sequence[Any]]:
        """The work in chunks under one progress bar; the caller writes each chunk's records."""
        if not work:
            return
        task = self.bar.add_task(description, total=len(work), unit=unit)
        for chunk in _chunks(work, self.config.chunk_size):
            yield chunk
            self.bar.advance(task, len(chunk))


def _load_prompt_sets(config: EvalConfig, run: _Run) -> dict[str, list[PromptRecord]]:
    sets = {}
    for kind, source in (("red_team", config.red_team_prompts), ("helpful", config.helpful_prompts)):
        accepted, rejected = load_prompts(source, config.prompt_column)
        run.rejected.write(r for r in rejected if r.id not in run.rejected_ids)
        sets[kind] = accepted[: config.max_prompts]
    return sets


def _answer_all(
    run: _Run,
    candidates: dict[str, ModelSpec],
    prompts: dict[str, list[PromptRecord]],
    load: Callable[[ModelSpec], LanguageModel],
    seed: int,
    engines: Engines,
) -> None:
    """Each candidate answers every prompt at the first temperature, and the red-team prompts at every other."""
    temperatures = run.config.temperatures
    jobs = []  # (label, temperature, kind, prompt)
    for label in candidates:
        for t_index, temperature in enumerate(temperatures):
            kinds = ("red_team", "helpful") if t_index == 0 else ("red_team",)
            for kind in kinds:
                jobs += [(label, temperature, kind, p) for p in prompts[kind]]
    jobs = [j for j in jobs if _answer_id(j[0], j[1], j[3].id) not in run.entries]
    if not jobs:
        return
    task = run.bar.add_task("answers", total=len(jobs), unit="answer")
    for label, spec in candidates.items():
        mine = [j for j in jobs if j[0] == label]
        if not mine:
            continue
        model = load(spec)
        asked = list({p.id: p for *_, p in mine}.values())
        room = run.config.sampling.max_new_tokens
        run.refuse(asked, context_overflows(model, [p.messages for p in asked], room), f"candidate {label}")
        run.bar.advance(task, sum(p.id in run.rejected_ids for *_, p in mine))
        chunks = [
            chunk
            for temperature in temperatures
            for chunk in _chunks(
                [j for j in mine if j[1] == temperature and j[3].id not in run.rejected_ids], run.config.chunk_size
            )
        ]
        do_chunk = functools.partial(_answer_chunk, spec.name, run.config.sampling, seed)
        with engines(spec, model) as engine:
            engine.run(chunks, do_chunk, run.stage, (run.writer, run.rejected), lambda n: run.bar.advance(task, n))
        del model  # one candidate in memory at a time
    # The answers went to disk, here or from the workers of a cluster: what is there now is what was answered.
    run.entries.update((r.id, r.entry) for r in run.stage.records(EvalRecord))


def _answer_chunk(
    model_name: str,
    sampling: SamplingParams,
    seed: int,
    model: LanguageModel,
    chunk: Sequence[tuple[str, float, str, PromptRecord]],
    advance: Advance,
) -> Output:
    """One candidate's answers to a chunk of (label, temperature, kind, prompt) jobs of one temperature."""
    label, temperature = chunk[0][0], chunk[0][1]
    params = sampling.model_copy(update={"temperature": temperature, "seed": seed})
    texts = model.generate([p.messages for *_, p in chunk], params)
    records = [
        EvalRecord(
            id=_answer_id(label, temperature, p.id),
            entry=EvalAnswer(
                model=label,
                model_name=model_name,
                prompt_id=p.id,
                kind=kind,
                prompt=p.messages,
                temperature=temperature,
                text=text,
                seed=seed,
            ),
        )
        for (_, _, kind, p), text in zip(chunk, texts, strict=True)
    ]
    advance(len(chunk))
    return Output(records)


def _refuse_beyond_judge(
    run: _Run, judge: LanguageModel, labels: list[str], prompts: dict[str, list[PromptRecord]]
) -> None:
    """Leave out the prompts whose longest question the judge could not read: the pairwise question with their two
    longest answers, and for a red-team prompt the longest rubric with its longest answer."""
    if getattr(judge, "context_window", None) is None:
        return
    answers: dict[str, list[EvalAnswer]] = {}
    for answer in sorted(answers_of(run.entries, run.rejected_ids).values(), key=lambda a: len(a.text), reverse=True):
        answers.setdefault(answer.prompt_id, []).append(answer)
    criterion_of = {kind: criterion for criterion, kind in CRITERIA.items()}
    rubric = max(HARMFULNESS_RUBRIC, EVASIVE_RUBRIC, key=len)
    asked, requests = [], []
    for kind, items in prompts.items():
        for prompt in items:
            texts = [a.text for a in answers.get(prompt.id, [])]
            compared = [a.text for a in answers.get(prompt.id, []) if a.temperature == run.config.temperatures[0]]
            if len(labels) > 1 and len(compared) > 1:
                question = judge_pairwise_question(prompt.messages, compared[0], compared[1], criterion_of[kind])
                asked.append(prompt)
                requests += judge_prompts(judge, [question], JUDGE_PAIRWISE_LEAD)
            if kind == "red_team" and texts:
                asked.append(prompt)
                requests += judge_prompts(
                    judge, [judge_rating_question(prompt.messages, texts[0], rubric)], JUDGE_RATING_LEAD
                )
    run.refuse(asked, context_overflows(judge, requests, OPTION_ROOM, "judge question"), f"judge {judge.name}")


def _pairwise_all(
    run: _Run, judge: Callable[[], LanguageModel], labels: list[str], prompts: dict[str, list[PromptRecord]]
) -> None:
    temperature = run.config.temperatures[0]
    jobs = []  # (id, criterion, prompt, a, b)
    for criterion, kind in CRITERIA.items():
        for prompt in (p for p in prompts[kind] if p.id not in run.rejected_ids):
            for a, b in combinations(labels, 2):
                jobs.append((f"pair:{criterion}:{prompt.id}:{a}:{b}", criterion, prompt, a, b))
    jobs = [j for j in jobs if j[0] not in run.entries]
    for chunk in run.each_chunk("judge: pairwise", jobs, "pair"):
        records = []
        for criterion in CRITERIA:
            mine = [j for j in chunk if j[1] == criterion]
            if not mine:
                continue
            verdicts = compare(
                judge(),
                [p.messages for _, _, p, _, _ in mine],
                [run.entries[_answer_id(a, temperature, p.id)].text for _, _, p, a, _ in mine],
                [run.entries[_answer_id(b, temperature, p.id)].text for _, _, p, _, b in mine],
                criterion,
            )
            records += [
                (
                    i,
                    EvalPairwise(
                        criterion=criterion,
                        prompt_id=p.id,
                        a=a,
                        b=b,
                        p_a=v.p_a,
                        p_a_first=v.p_a_first,
                        p_a_second=v.p_a_second,
                        logprobs=v.logprobs,
                        judge=judge().name,
                    ),
                )
                for (i, _, p, a, b), v in zip(mine, verdicts, strict=True)
            ]
        run.write(records)


@dataclass(frozen=True)
class _Text:
    """A text to rate: a candidate's answer, or one revision of an SL-CAI record."""

    target: str
    model: str
    temperature: float | None
    revision: int | None
    conversation: list[Message]
    text: str


Scorer = Callable[[list[list[Message]], list[str]], list[tuple[float, list[float]]]]


def _rate(run: _Run, metric: str, texts: Sequence[_Text], score: Scorer, scorer_name: str) -> None:
    jobs = [t for t in texts if f"rating:{metric}:{t.target}" not in run.entries]
    for chunk in run.each_chunk(f"rate: {metric}", jobs, "text"):
        results = score([t.conversation for t in chunk], [t.text for t in chunk])
        run.write(
            [
                (
                    f"rating:{metric}:{t.target}",
                    EvalRating(
                        metric=metric,
                        target=t.target,
                        model=t.model,
                        temperature=t.temperature,
                        revision=t.revision,
                        score=value,
                        probs=probs,
                        scorer=scorer_name,
                    ),
                )
                for t, (value, probs) in zip(chunk, results, strict=True)
            ]
        )


def _answer_texts(run: _Run, temperature: float | None = None) -> list[_Text]:
    return [
        _Text(i, a.model, a.temperature, None, a.prompt, a.text)
        for i, a in sorted(answers_of(run.entries, run.rejected_ids, "red_team", temperature).items())
    ]


def revision_texts(records: Sequence[SLRecord], limit: int) -> list[_Text]:
    """Every revision (0 = the initial answer) of the first `limit` red-team SL-CAI records, by id."""
    records = sorted((r for r in records if r.kind == "red_team" and r.steps), key=lambda r: r.id)[:limit]
    return [
        _Text(f"sl:{r.id}:{n}", REVISIONS, None, n, r.prompt, text)
        for r in records
        for n, text in enumerate([r.initial, *(step.revision for step in r.steps)])
    ]


# ---- the stage ------------------------------------------------------------------------------------------------


def evaluate(
    stage: StageFolder,
    config: EvalConfig,
    candidates: dict[str, ModelSpec],
    judge: ModelSpec,
    seed: int,
    load: Callable[[ModelSpec], LanguageModel],
    *,
    sl_records: Sequence[SLRecord],
    pm_dir: Path | None,
    constitution: Constitution,
    summary_path: Path,
    engines: Engines | None = None,
) -> dict[str, Any]:
    """The evaluate stage: answers, judgements, ratings (resumable), the judge's own accuracy, then the summary.

    Records go to `stage`; the conclusions (EvalSummary) to `summary_path`. Returns the headline numbers.
    `engines` gives, for a candidate's spec and loaded model, what does its answering chunks (default: the model,
    in this process); the judge and the preference model always run here.
    """
    labels = list(candidates)
    judge_model = functools.cache(lambda: load(judge))
    with progress_bar() as bar:
        run = _Run(stage, config, bar)
        try:
            prompts = _load_prompt_sets(config, run)
            _answer_all(run, candidates, prompts, load, seed, engines or _here)
            _refuse_beyond_judge(run, judge_model(), labels, prompts)
            if len(labels) > 1:
                _pairwise_all(run, judge_model, labels, prompts)
            answers, first = _answer_texts(run), _answer_texts(run, config.temperatures[0])
            revisions = revision_texts(sl_records, config.revision_records)

            def rubric(text: str) -> Scorer:
                return lambda conversations, texts: rubric_ratings(judge_model(), conversations, texts, text)

            _rate(run, "harmfulness", answers + ([] if pm_dir else revisions), rubric(HARMFULNESS_RUBRIC), judge.name)
            _rate(run, "helpfulness", revisions, rubric(HELPFULNESS_RUBRIC), judge.name)
            _rate(run, "evasive", first, lambda c, t: judge_evasive(judge_model(), c, t), judge.name)
            if pm_dir is not None:
                scorer = functools.cache(lambda: PreferenceModel(pm_dir))
                pm_scores: Scorer = lambda c, t: [(value, []) for value in scorer().score(c, t)]  # noqa: E731
                _rate(run, "pm", answers + revisions, pm_scores, str(pm_dir))
        finally:
            run.close()
    summary = summarize(run.entries, run.rejected_ids, run.config, labels, judge.name, pm_dir is not None, seed)
    if config.judge_items is not None:
        quality = judge_quality(judge_model(), judge.name, constitution, seed, config.judge_items)
        summary = summary.model_copy(update={"judge_quality": quality})
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    summary_path.write_text(summary.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return headline(summary, run.entries) | {
        "judge_accuracy": summary.judge_quality and summary.judge_quality.accuracy
    }
