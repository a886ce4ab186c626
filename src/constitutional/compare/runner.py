"""Running a comparison (`run`): build the collective constitution, run both pipelines, judge adherence, write
the summary and the page.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from constitutional import __version__, pipeline
from constitutional.compare.adherence import (
    Answer,
    Item,
    final_answers,
    pick_prompts,
    sample_principles,
    score_adherence,
    summarize_adherence,
)
from constitutional.compare.page import render_page
from constitutional.compare.spec import COLLECTIVE, FILES, SIDES, CompareSpec, _check_overrides, location, recipes
from constitutional.compare.summary import CompareSummary, RunSide
from constitutional.constitution import Constitution, load_constitution
from constitutional.errors import InputError
from constitutional.models.base import LanguageModel
from constitutional.recipe import Recipe
from constitutional.records import EvalAnswer, EvalSummary
from constitutional.runview import MANIFEST, RunView
from constitutional.stages import EVALUATE
from constitutional.stages.base import model_key
from constitutional.stages.definitions import REPORT
from constitutional.store import StageFolder

# ---- the collective constitution --------------------------------------------------------------------------------


def _export_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(file.relative_to(folder).as_posix().encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()[:16]


def build_constitution(
    spec: CompareSpec, writer: LanguageModel | None = None, embedder=None
) -> tuple[Constitution, bool]:
    """The collective constitution in the comparison's folder: (constitution, whether it was built now).

    Skipped when the file is there and the export's content, its attribution, the build settings, the writer and
    the package version are those it was built from (recorded in build.json beside it).
    """
    from constitutional import collective
    from constitutional.collective.ingest import find_attribution

    export = Path(spec.export)
    if not export.is_dir():
        raise InputError("not a folder", path=export, field="export", hint="point it at your export")
    stamp = {
        "export": _export_digest(export),
        "attribution": find_attribution(export),
        "config": spec.collective.model_dump(),
        "writer": model_key(spec.writer) if spec.writer else getattr(writer, "name", None),
        "version": __version__,
    }
    output, record = location(spec, "constitution"), location(spec, "build_stamp")
    if output.is_file() and location(spec, "provenance").is_file() and record.is_file():
        previous = json.loads(record.read_text(encoding="utf-8"))
        if {key: previous.get(key) for key in stamp} == stamp:
            return load_constitution(output), False
    if writer is None and spec.writer is not None:
        from constitutional.models import load_model

        writer = load_model(spec.writer)
    result = collective.build(
        export,
        output,
        config=spec.collective,
        writer=writer,
        embedder=embedder,
        provenance=location(spec, "provenance"),
        report=location(spec, "build_page"),
    )
    _write_json(record, {**stamp, "summary": result.summary()})
    return result.constitution, True


# ---- running it -------------------------------------------------------------------------------------------------


@dataclass
class CompareResult:
    summary: CompareSummary
    page: Path
    outcomes: dict[str, list[pipeline.Outcome]]
    built_constitution: bool
    judged: int  # adherence items judged in this call (0 on a rerun with nothing new)
    paths: dict[str, Path] = field(default_factory=dict)

    def headline(self) -> dict[str, Any]:
        """The figures a command prints: adherence per cell, judge behaviour and accuracy, where things are."""
        found: dict[str, Any] = {
            f"adherence: {c.model} model vs {c.constitution} constitution": c.adherence.value
            for c in self.summary.adherence
        }
        found["judge consistent across phrasings"] = self.summary.judge.consistent
        quality = next((s.judge_quality for s in self.summary.runs.values() if s.judge_quality), None)
        if quality is not None:
            found["judge accuracy"] = f"{quality.accuracy:.3f}" + (" (at chance)" if quality.at_chance else "")
        found["constitution built now"] = self.built_constitution
        found["items judged now"] = self.judged
        return found | {key: str(path) for key, path in self.paths.items()}


def _lock(root: Path) -> FileLock:
    if (root / MANIFEST).is_file():
        raise InputError(
            "this is a pipeline run directory, not a comparison's",
            path=root,
            hint="give the comparison its own run_dir; its two runs go in collective/ and builtin/ inside it",
        )
    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(root / ".lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise InputError(
            "another comparison is writing here", path=root, hint="wait for it, or use another run_dir"
        ) from None
    return lock


def run(
    spec: CompareSpec,
    *,
    writer: LanguageModel | None = None,
    embedder=None,
    judge: LanguageModel | None = None,
) -> CompareResult:
    """Build the constitution, run both pipelines, judge adherence, write the summary and the page.

    Everything resumes: a rerun skips the build, the complete stages and the judged items. `writer`, `embedder`
    and `judge` replace the models the spec and recipe name (tests use scripted ones).
    """
    started = time.perf_counter()
    # Bad input fails here, before anything is written.
    _check_overrides(spec)
    load_constitution(spec.builtin)
    if not Path(spec.export).is_dir():
        raise InputError("not a folder", path=spec.export, field="export", hint="point it at your export")
    root = Path(spec.run_dir)
    fresh = not root.exists()
    lock = _lock(root)
    try:
        try:
            _, built = build_constitution(spec, writer, embedder)
        except BaseException:
            if fresh:  # nothing but a lock and a half-made folder: leave no trace
                lock.release()
                shutil.rmtree(root, ignore_errors=True)
            raise
        _write_json(location(spec, "spec"), spec.model_dump())
        plans = recipes(spec)
        outcomes = {side: pipeline.run(plans[side], spec.stages) for side in SIDES}
        summary, judged = _compare(spec, plans, judge, started)
        _write_json(location(spec, "summary"), summary.model_dump())
        _write_text(location(spec, "page"), render_page(summary))
    finally:
        lock.release()
    paths = {key: location(spec, key) for key in ("constitution", "summary", "page")}
    return CompareResult(summary, paths["page"], outcomes, built, judged, paths)


def _compare(
    spec: CompareSpec, plans: dict[str, Recipe], judge: LanguageModel | None, started: float
) -> tuple[CompareSummary, int]:
    """Adherence items planned, judged where new, summarized with both runs' Elo: (summary, items judged now)."""
    recipe = plans[COLLECTIVE]  # the same as the other but for the constitution
    answers = {side: final_answers(location(spec, side), recipe.evaluate.temperatures[0]) for side in SIDES}
    prompts = pick_prompts(answers, spec.adherence.answers)
    if not prompts:
        raise InputError(
            "the two runs answered no held-out prompt in common",
            path=spec.run_dir,
            hint="both runs evaluate on the same prompts unless their evaluate settings differ; rerun evaluate",
        )
    constitutions = {side: load_constitution(plans[side].constitution) for side in SIDES}
    if judge is not None:
        judge_name, judge_key, load_judge = judge.name, judge.name, lambda: judge
    else:
        from constitutional.models import load_model

        judge_name, judge_key = recipe.models.judge.name, json.dumps(model_key(recipe.models.judge), sort_keys=True)
        load_judge = functools.cache(lambda: load_model(recipe.models.judge))
    items = [
        Item(Answer(answer_id, side, entry), scored, constitutions[scored].tag, principle, judge_name, judge_key)
        for side in SIDES
        for scored in SIDES
        for principle in sample_principles(constitutions[scored], spec.adherence.principles, recipe.seed, scored)
        for answer_id, entry in (answers[side][p] for p in prompts)
    ]
    records, judged = score_adherence(StageFolder(location(spec, "records")), load_judge, items, spec.adherence)
    cells, principle_rows, behaviour = summarize_adherence(records, spec.adherence, recipe.seed, judge_name)
    provenance_file, build_page = location(spec, "provenance"), location(spec, "build_page")
    provenance = json.loads(provenance_file.read_text(encoding="utf-8")) if provenance_file.is_file() else {}
    summary = CompareSummary(
        export=spec.export,
        attribution=provenance.get("attribution"),
        constitution_file=FILES["constitution"],
        build_page=FILES["build_page"] if build_page.is_file() else None,
        runs={side: _run_side(spec, side, constitutions[side].tag, answers[side][prompts[0]][1]) for side in SIDES},
        adherence=cells,
        principles=principle_rows,
        judge=behaviour,
        settings=spec.adherence,
        seconds=round(time.perf_counter() - started, 1),
    )
    return summary, judged


def _run_side(spec: CompareSpec, side: str, constitution: str, answer: EvalAnswer) -> RunSide:
    view = RunView(location(spec, side))
    summary = view.read_json(EVALUATE.outputs["summary"], EvalSummary)
    page = REPORT.output(view.dir, "page")
    return RunSide(
        run_dir=str(view.dir),
        constitution=constitution,
        candidate=answer.model,
        model_name=answer.model_name,
        report=page.relative_to(spec.run_dir).as_posix() if page.is_file() else None,
        judge=summary.judge if summary else None,
        elo=summary.elo if summary else {},
        judge_quality=summary.judge_quality if summary else None,
    )


def _write_text(path: Path, text: str) -> None:
    """Written beside, then renamed: a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _write_json(path: Path, data: Any) -> None:
    _write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
