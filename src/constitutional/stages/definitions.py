"""The stages of a recipe, in pipeline order. The only place that names a stage's folder and outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from constitutional.recipe import Recipe
from constitutional.records import ComparisonRecord, EvalSummary, LabelStats, PairRecord, PMMetrics, SLRecord
from constitutional.runview import RunView
from constitutional.stages.base import Context, StageDef, chunk_engine, model_key

# Settings that change how often work is saved, not what it produces: left out of fingerprints.
SPEED_ONLY = {"checkpoint_steps"}


def _constitution(recipe: Recipe):
    from constitutional.constitution import load_constitution

    return load_constitution(recipe.constitution)


def _constitution_key(recipe: Recipe) -> str:
    from constitutional.stages.base import constitution_digest

    return constitution_digest(_constitution(recipe))


def _load(spec):
    from constitutional.models import load_model

    return load_model(spec)


def _training_outputs(ctx: Context):
    from constitutional.finetuning import TrainingOutputs

    return TrainingOutputs(model_dir=ctx.output(ctx.stage, "model"), checkpoint_dir=ctx.folder.dir / "checkpoints")


# ---- SL-CAI ---------------------------------------------------------------------------------------------------


def _sl_generate(recipe: Recipe, ctx: Context) -> dict[str, Any]:
    from constitutional import sl

    policy = _load(recipe.models.policy)
    with chunk_engine(recipe, recipe.models.policy, policy) as engine:
        return sl.generate(ctx.folder, policy, _constitution(recipe), recipe.sl, recipe.seed, engine)


SL_GENERATE = StageDef(
    name="sl_generate",
    command="sl generate",
    summary="Answer red-team prompts, then critique and revise each answer N times under random principles.",
    example="cai sl generate --config recipes/demo.yaml --num-revisions 2 --run-dir runs/try",
    section="sl",
    config=lambda r: {
        "sl": r.sl.model_dump(),
        "constitution": _constitution_key(r),
        "policy": model_key(r.models.policy),
        "seed": r.seed,
    },
    run=_sl_generate,
    templates=("CRITIQUE_TEMPLATE", "REVISION_TEMPLATE"),
    inputs=lambda r: [r.sl.red_team_prompts, r.sl.helpful_prompts],
)


def _sl_train(recipe: Recipe, ctx: Context) -> dict[str, Any]:
    from constitutional import sl_train

    records = ctx.records(SL_GENERATE, SLRecord)
    return sl_train.train(records, recipe.models.policy, recipe.sl_train, recipe.seed, _training_outputs(ctx))


SL_TRAIN = StageDef(
    name="sl_train",
    command="sl train",
    summary="Fine-tune the policy on its revisions with TRL's SFTTrainer (LoRA by default); saves safetensors.",
    example="cai sl train --config recipes/demo.yaml --max-steps 10",
    section="sl_train",
    config=lambda r: {
        "sl_train": r.sl_train.model_dump(exclude=SPEED_ONLY),
        "base_model": model_key(r.models.policy),
        "seed": r.seed,
    },
    run=_sl_train,
    needs=lambda r: (SL_GENERATE,),
    outputs={"model": "sl_model"},
    resume="checkpoint",
)


# ---- RL-CAI ---------------------------------------------------------------------------------------------------


def _pair_policy(recipe: Recipe, ctx: Context):
    """The SL-CAI model answers when the recipe asks for it and it is trained; else the configured policy."""
    if recipe.sample.policy == "sl_model" and ctx.complete(SL_TRAIN):
        return recipe.models.policy.model_copy(update={"name": str(ctx.output(SL_TRAIN, "model"))})
    return recipe.models.policy


def _rl_sample(recipe: Recipe, ctx: Context) -> dict[str, Any]:
    from constitutional import pairs

    spec = _pair_policy(recipe, ctx)
    policy = _load(spec)
    with chunk_engine(recipe, spec, policy) as engine:
        return pairs.sample(ctx.folder, policy, _constitution(recipe).tag, recipe.sample, recipe.seed, engine)


RL_SAMPLE = StageDef(
    name="rl_sample",
    command="rl sample",
    summary="Sample two answers per red-team and helpfulness prompt from the policy (the SL-CAI model once trained).",
    example="cai rl sample --config recipes/demo.yaml --max-prompts 8 --run-dir runs/try",
    section="sample",
    config=lambda r: {
        "sample": r.sample.model_dump(),
        "constitution": _constitution(r).tag,
        "policy": model_key(r.models.policy),
        "seed": r.seed,
    },
    run=_rl_sample,
    uses=lambda r: (SL_TRAIN,) if r.sample.policy == "sl_model" else (),
    inputs=lambda r: [r.sample.red_team_prompts, r.sample.helpful_prompts],
)

COMPARISON_TEMPLATES = (
    "FENCE",
    "QUOTE_MARK",
    "COMPARISON_TEMPLATE",
    "ANSWER_PREFIX",
    "OPTION_LABELS",
    "COT_REQUEST",
    "COT_PREFIX",
    "COT_FOLLOWUP",
)


def _rl_label(recipe: Recipe, ctx: Context) -> dict[str, Any]:
    from constitutional import feedback

    pairs = ctx.records(RL_SAMPLE, PairRecord)
    model = _load(recipe.models.feedback)
    with chunk_engine(recipe, recipe.models.feedback, model) as engine:
        return feedback.label(ctx.folder, pairs, model, _constitution(recipe), recipe.label, recipe.seed, engine)


RL_LABEL = StageDef(
    name="rl_label",
    command="rl label",
    summary="Label each sampled pair with the feedback model's probability that answer a is the better one.",
    example="cai rl label --config recipes/demo.yaml --num-principles 4 --debias true",
    section="label",
    config=lambda r: {
        "label": r.label.model_dump(),
        "constitution": _constitution_key(r),
        "feedback": model_key(r.models.feedback),
        "seed": r.seed,
    },
    run=_rl_label,
    needs=lambda r: (RL_SAMPLE,),
    templates=COMPARISON_TEMPLATES,
)


def _pm_train(recipe: Recipe, ctx: Context) -> dict[str, Any]:
    from constitutional import preference

    comparisons = [] if recipe.pm.preference_data else ctx.records(RL_LABEL, ComparisonRecord)
    return preference.train(comparisons, recipe.pm, recipe.seed, _training_outputs(ctx))


PM_TRAIN = StageDef(
    name="pm_train",
    command="pm train",
    summary="Train the preference model on the soft labels (TRL RewardTrainer); held-out accuracy and calibration.",
    example="cai pm train --config recipes/demo.yaml --max-steps 20  (or --preference-data prefs.jsonl)",
    section="pm",
    config=lambda r: {"pm": r.pm.model_dump(exclude=SPEED_ONLY), "seed": r.seed},
    run=_pm_train,
    # Imported preference data needs no labelling stage; its content hash is an input instead.
    needs=lambda r: () if r.pm.preference_data else (RL_LABEL,),
    outputs={"model": "preference_model"},
    inputs=lambda r: [r.pm.preference_data],
    resume="checkpoint",
)


def _rl_start(recipe: Recipe, ctx: Context) -> str:
    """RL starts from the SL-CAI model when the recipe asks for it (or, on auto, when it is trained)."""
    from constitutional.models.embedded import resolve

    if recipe.rl.start_from == "sl" or (recipe.rl.start_from == "auto" and ctx.complete(SL_TRAIN)):
        return str(ctx.output(SL_TRAIN, "model"))
    return resolve(recipe.models.policy.name)


def _rl_train(recipe: Recipe, ctx: Context) -> dict[str, Any]:
    from constitutional import rl

    start = _rl_start(recipe, ctx)
    outputs = _training_outputs(ctx)
    if recipe.rl.algo == "dpo":
        comparisons = ctx.records(RL_LABEL, ComparisonRecord)
        return rl.train(start, recipe.rl, recipe.seed, outputs, comparisons=comparisons)
    return rl.train(start, recipe.rl, recipe.seed, outputs, reward_model_dir=ctx.output(PM_TRAIN, "model"))


RL_TRAIN = StageDef(
    name="rl_train",
    command="rl train",
    summary="RL the policy against the preference model (TRL RLOO, or --algo grpo), or DPO on the labelled pairs.",
    example="cai rl train --config recipes/demo.yaml --algo rloo --max-steps 4",
    section="rl",
    config=lambda r: {
        "rl": r.rl.model_dump(exclude=SPEED_ONLY),
        "base_model": model_key(r.models.policy),
        "seed": r.seed,
    },
    run=_rl_train,
    # DPO learns from the labels themselves; RLOO and GRPO from the preference model's scores.
    needs=lambda r: (
        ((RL_LABEL,) if r.rl.algo == "dpo" else (PM_TRAIN,)) + ((SL_TRAIN,) if r.rl.start_from == "sl" else ())
    ),
    uses=lambda r: (SL_TRAIN,) if r.rl.start_from == "auto" else (),
    outputs={"model": "rl_model"},
    inputs=lambda r: [r.rl.red_team_prompts, r.rl.helpful_prompts],
    resume="checkpoint",
)


# ---- evaluation and report ------------------------------------------------------------------------------------

JUDGE_TEMPLATES = (
    "JUDGE_PAIRWISE_TEMPLATE",
    "JUDGE_CRITERIA",
    "JUDGE_PAIRWISE_LEAD",
    "PAIRWISE_OPTIONS",
    "JUDGE_RATING_TEMPLATE",
    "HARMFULNESS_RUBRIC",
    "HELPFULNESS_RUBRIC",
    "EVASIVE_RUBRIC",
    "JUDGE_RATING_LEAD",
    "RATING_OPTIONS",
    "YES_NO_OPTIONS",
)


def _candidates(recipe: Recipe, ctx: Context) -> dict[str, Any]:
    """base = the policy; sl, rl = the run's trained models when complete (on the policy's backend settings)."""
    found = {"base": recipe.models.policy}
    for label, stage in (("sl", SL_TRAIN), ("rl", RL_TRAIN)):
        if ctx.complete(stage):
            found[label] = recipe.models.policy.model_copy(update={"name": str(ctx.output(stage, "model"))})
    return {**found, **recipe.evaluate.candidates}


def _evaluate(recipe: Recipe, ctx: Context) -> dict[str, Any]:
    from constitutional.evaluate import suite

    return suite.evaluate(
        ctx.folder,
        recipe.evaluate,
        _candidates(recipe, ctx),
        recipe.models.judge,
        recipe.seed,
        _load,
        sl_records=ctx.records(SL_GENERATE, SLRecord) if ctx.complete(SL_GENERATE) else [],
        pm_dir=ctx.output(PM_TRAIN, "model") if ctx.complete(PM_TRAIN) else None,
        constitution=_constitution(recipe),
        summary_path=ctx.output(EVALUATE, "summary"),
        engines=lambda spec, model: chunk_engine(recipe, spec, model),
    )


EVALUATE = StageDef(
    name="evaluate",
    command="eval compare",
    summary="Compare the base, SL-CAI and RL-CAI models on held-out prompts: Elo, harmfulness, evasiveness.",
    example="cai eval compare --config recipes/demo.yaml --max-prompts 4",
    section="evaluate",
    config=lambda r: {
        "evaluate": r.evaluate.model_dump(),
        "policy": model_key(r.models.policy),
        "judge": model_key(r.models.judge),
        "constitution": _constitution_key(r),
        "seed": r.seed,
    },
    run=_evaluate,
    # Every model output is optional here, but a retrained model or new records make old answers stale.
    uses=lambda r: (SL_GENERATE, SL_TRAIN, PM_TRAIN, RL_TRAIN),
    outputs={"summary": "evaluate/summary.json"},
    templates=JUDGE_TEMPLATES + COMPARISON_TEMPLATES,
    inputs=lambda r: [r.evaluate.red_team_prompts, r.evaluate.helpful_prompts],
)


def _report(recipe: Recipe, ctx: Context) -> dict[str, Any]:
    return write_report(ctx.store.dir)


REPORT = StageDef(
    name="report",
    command="report RUN_DIR",
    summary="Write one self-contained HTML report of the run.",
    example="cai report runs/demo",
    section=None,
    config=lambda r: {},  # no settings: it is redone whenever a stage it shows changes
    run=_report,
    uses=lambda r: (SL_GENERATE, RL_LABEL, PM_TRAIN, EVALUATE),
    outputs={"page": "report.html"},
    resume="restart",
)

STAGES: dict[str, StageDef] = {
    s.name: s for s in (SL_GENERATE, SL_TRAIN, RL_SAMPLE, RL_LABEL, PM_TRAIN, RL_TRAIN, EVALUATE, REPORT)
}


# ---- the report's inputs, read through the run view ----------------------------------------------------------

# The preference-model stage writes its held-out metrics beside the model.
PM_METRICS_FILE = "metrics.json"


def _label_stats(view: RunView) -> LabelStats | None:
    status = view.status(RL_LABEL.name)
    if status is None or not status.complete:
        return None
    fields = {key: status.summary.get(key) for key in LabelStats.model_fields}
    return LabelStats.model_validate(fields)


def report_inputs(view: RunView):
    """Everything the report shows, typed, from the run as it is on disk now."""
    from constitutional.report import ReportInputs, StageRow

    manifest = view.manifest
    pm_metrics = Path(PM_TRAIN.outputs["model"]) / PM_METRICS_FILE
    return ReportInputs(
        run_dir=view.dir,
        manifest=manifest,
        stages=[StageRow(s.name, s.cli, manifest.stages.get(s.name)) for s in STAGES.values()],
        makers={
            "traces": SL_GENERATE.cli,
            "comparisons": RL_LABEL.cli,
            "pm_metrics": PM_TRAIN.cli,
            "summary": EVALUATE.cli,
        },
        report_stage=REPORT.name,
        summary=view.read_json(EVALUATE.outputs["summary"], EvalSummary),
        traces=view.records(SL_GENERATE.name, SLRecord),
        comparisons=view.records(RL_LABEL.name, ComparisonRecord),
        label_stats=_label_stats(view),
        pm_metrics=view.read_json(pm_metrics.as_posix(), PMMetrics),
    )


def write_report(run_dir: str | Path, output: str | Path | None = None) -> dict[str, Any]:
    """Write the run's HTML report (RUN_DIR/report.html unless `output` is given); returns path and sections."""
    from constitutional import report

    view = RunView(run_dir)
    target = Path(output) if output is not None else REPORT.output(view.dir, "page")
    return report.write_report(report_inputs(view), target)
