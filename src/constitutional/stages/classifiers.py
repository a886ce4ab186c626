"""The constitutional-classifier stages, in pipeline order: the synthetic pool (model calls), the examples made
from it, the input classifier, the streaming output classifier, the evaluation. A pipeline of their own
(`CLASSIFIER_STAGES`, run by `cai clf ...`), read from the recipe's `classifiers:` section; the only place that
names their folders and outputs."""

from __future__ import annotations

import hashlib
from typing import Any

from constitutional.recipe import Recipe
from constitutional.stages.base import Context, StageDef, chunk_engine, model_key

# Settings that change how often work is saved, not what it produces: left out of fingerprints.
SPEED_ONLY = {"checkpoint_steps"}


def _constitution(recipe: Recipe):
    from constitutional.classifiers.constitution import load_classifier_constitution

    return load_classifier_constitution(recipe.classifiers.constitution)


def _constitution_key(recipe: Recipe) -> str:
    from constitutional.stages.base import constitution_digest

    return constitution_digest(_constitution(recipe))


def _labelled_digests(sources: list[str]) -> dict[str, str]:
    """A content hash of each labelled set, read and checked first (file, line and field on a bad row): an edited
    set counts, and a broken one is refused before the run directory is touched."""
    from constitutional.classifiers.labelled import labelled_path, load_labelled

    found = {}
    for source in sources:
        load_labelled(source)
        found[source] = hashlib.sha256(labelled_path(source).read_bytes()).hexdigest()[:16]
    return found


def _load(spec):
    from constitutional.models import load_model

    return load_model(spec)


def _examples(ctx: Context):
    from constitutional.classifiers.records import ClassifierExample

    return ctx.records(CLF_DATA, ClassifierExample)


# ---- data ------------------------------------------------------------------------------------------------------


def _data_fields(recipe: Recipe, generation: bool) -> dict[str, Any]:
    from constitutional.classifiers.synthesize import GENERATION_FIELDS

    data = recipe.classifiers.data
    return data.model_dump(include=GENERATION_FIELDS) if generation else data.model_dump(exclude=GENERATION_FIELDS)


def _clf_generate(recipe: Recipe, ctx: Context) -> dict[str, Any]:
    from constitutional.classifiers.synthesize import generate

    generator, judge = _load(recipe.models.generator), _load(recipe.models.judge)
    with (
        chunk_engine(recipe, recipe.models.generator, generator) as writes,
        chunk_engine(recipe, recipe.models.judge, judge) as reads,
    ):
        data = recipe.classifiers.data
        return generate(ctx.folder, generator, judge, _constitution(recipe), data, recipe.seed, (writes, reads))


DATA_TEMPLATES = (
    "CLF_REQUESTS_TEMPLATE",
    "CLF_REQUEST_ITEM",
    "CLF_ANSWER_LEADS",
    "CLF_PARAPHRASE_TEMPLATE",
    "CLF_JUDGE_TEMPLATE",
    "CLF_JUDGE_QUESTIONS",
    "FENCE",
    "QUOTE_MARK",
    "JUDGE_RATING_LEAD",
    "YES_NO_OPTIONS",
)

CLF_GENERATE = StageDef(
    name="clf_generate",
    command="clf data",
    summary="The synthetic pool: the constitution's examples, generated requests, answers and paraphrases, and the "
    "judge's reading of a sample.",
    example="cai clf data --config recipes/classifiers.yaml --data.rounds 1 --run-dir runs/try",
    section="classifiers",
    config=lambda r: {
        "data": _data_fields(r, generation=True),
        "constitution": _constitution_key(r),
        "generator": model_key(r.models.generator),
        "judge": model_key(r.models.judge),
        "seed": r.seed,
    },
    run=_clf_generate,
    templates=DATA_TEMPLATES,
    inputs=lambda r: [r.classifiers.data.general_prompts],
)


def _clf_data(recipe: Recipe, ctx: Context) -> dict[str, Any]:
    from constitutional.classifiers.assemble import assemble
    from constitutional.classifiers.synthesize import read_pool
    from constitutional.models.sentence import MiniLM

    data = recipe.classifiers.data
    pool = read_pool(ctx.store.folder(CLF_GENERATE.name), _constitution(recipe), data, recipe.seed)
    return assemble(ctx.folder, pool, data, recipe.seed, MiniLM())


CLF_DATA = StageDef(
    name="clf_data",
    command="clf data",
    summary="Classifier examples from the pool: augmented, contested where the judge disagreed, split with no "
    "near duplicate across splits or of a held-out evaluation item.",
    example="cai clf data --config recipes/classifiers.yaml --data.augment-copies 3",
    section="classifiers",
    config=lambda r: {
        "data": _data_fields(r, generation=False),
        "holdout": _labelled_digests(r.classifiers.data.holdout),
        "seed": r.seed,
    },
    run=_clf_data,
    needs=lambda r: (CLF_GENERATE,),
    resume="restart",  # seconds of work: redone whole rather than resumed
)


# ---- training --------------------------------------------------------------------------------------------------


def _clf_train_input(recipe: Recipe, ctx: Context) -> dict[str, Any]:
    from constitutional.classifiers.training import train_input

    model_dir = ctx.output(ctx.stage, "model")
    return train_input(_examples(ctx), recipe.classifiers, ctx.folder.dir / "checkpoints", model_dir)


CLF_TRAIN_INPUT = StageDef(
    name="clf_train_input",
    command="clf train",
    summary="Fine-tune the input classifier (an encoder with a classification head) and calibrate its threshold.",
    example="cai clf train --config recipes/classifiers.yaml --input.epochs 1",
    section="classifiers",
    config=lambda r: {
        "input": r.classifiers.input.model_dump(exclude=SPEED_ONLY),
        "train_on_contested": r.classifiers.train_on_contested,
    },
    run=_clf_train_input,
    needs=lambda r: (CLF_DATA,),
    outputs={"model": "model/input"},
    resume="checkpoint",
)


def _clf_train_output(recipe: Recipe, ctx: Context) -> dict[str, Any]:
    from constitutional.classifiers.training import train_output

    return train_output(_examples(ctx), recipe.classifiers, ctx.output(ctx.stage, "model"))


CLF_TRAIN_OUTPUT = StageDef(
    name="clf_train_output",
    command="clf train",
    summary="Train the streaming output classifier (a value head on a frozen causal LM) and calibrate it.",
    example="cai clf train --config recipes/classifiers.yaml --output.epochs 10",
    section="classifiers",
    config=lambda r: {
        "output": r.classifiers.output.model_dump(),
        "train_on_contested": r.classifiers.train_on_contested,
    },
    run=_clf_train_output,
    needs=lambda r: (CLF_DATA,),
    outputs={"model": "model/output"},
    resume="restart",  # reading the answers and fitting the head keep no partial state worth resuming
)


# ---- evaluation ------------------------------------------------------------------------------------------------


def _clf_eval(recipe: Recipe, ctx: Context) -> dict[str, Any]:
    from constitutional.classifiers.evaluation import evaluate
    from constitutional.classifiers.labelled import load_labelled
    from constitutional.classifiers.page import write_page

    trained = {
        stage.name: ctx.output(stage, "model") if ctx.complete(stage) else None
        for stage in (CLF_TRAIN_INPUT, CLF_TRAIN_OUTPUT)
    }
    evaluation = evaluate(
        _examples(ctx),
        {source: load_labelled(source) for source in recipe.classifiers.eval.datasets},
        recipe.classifiers,
        _constitution(recipe),
        trained[CLF_TRAIN_INPUT.name],
        trained[CLF_TRAIN_OUTPUT.name],
        _load,
    )
    summary = ctx.output(ctx.stage, "summary")
    summary.parent.mkdir(parents=True, exist_ok=True)
    summary.write_text(evaluation.model_dump_json(indent=2) + "\n", encoding="utf-8")
    page = write_page(evaluation, ctx.output(ctx.stage, "page"))
    return {"summary": str(summary), "page": str(page), **evaluation.headline()}


CLF_EVAL = StageDef(
    name="clf_eval",
    command="clf eval",
    summary="Evaluate the classifiers and the baselines on the synthetic test split and labelled sets; "
    "write summary.json and an HTML page with ROC/PR curves and per-category tables.",
    example="cai clf eval --config recipes/classifiers.yaml --eval.datasets '[my_set.jsonl]'",
    section="classifiers",
    config=lambda r: {
        "eval": r.classifiers.eval.model_dump(exclude={"datasets", "policy_judges"}),
        "datasets": _labelled_digests(r.classifiers.eval.datasets),
        "policy_judges": [model_key(spec) for spec in r.classifiers.eval.policy_judges],
        "target_fpr": r.classifiers.input.target_fpr,
        "max_answer_tokens": r.classifiers.output.max_answer_tokens,
        "constitution": _constitution_key(r),
    },
    run=_clf_eval,
    needs=lambda r: (CLF_DATA,),
    # A retrained classifier makes old figures stale; neither is required (the baselines alone can be measured).
    uses=lambda r: (CLF_TRAIN_INPUT, CLF_TRAIN_OUTPUT),
    outputs={"summary": "clf_eval/summary.json", "page": "classifiers_report.html"},
    templates=("POLICY_JUDGE_TEMPLATE", "FENCE", "QUOTE_MARK", "JUDGE_RATING_LEAD", "YES_NO_OPTIONS"),
    resume="restart",
)

CLASSIFIER_STAGES: dict[str, StageDef] = {
    s.name: s for s in (CLF_GENERATE, CLF_DATA, CLF_TRAIN_INPUT, CLF_TRAIN_OUTPUT, CLF_EVAL)
}
