"""`cai clf data | train | eval | run | score`: constitutional classifiers from a recipe's `classifiers:` section."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from constitutional.cli.common import friendly_errors, out, print_outcomes
from constitutional.cli.stage_commands import OVERRIDES, ConfigOption, ForceOption, StagesOption

clf_app = typer.Typer(
    no_args_is_help=True,
    help="Constitutional classifiers: synthetic data from a classifier constitution, an input classifier and a "
    "streaming output classifier, evaluated against baselines.",
)
SECTION = "classifiers"


def _fields(*parts: str) -> str:
    """The recipe fields a command's flags can set, from the parts of the `classifiers:` section it reads."""
    from constitutional.classifiers.config import ClassifiersConfig
    from constitutional.recipe import describe_fields

    rows = [
        row
        for part in parts
        for row in (
            describe_fields(ClassifiersConfig.model_fields[part].annotation, f"{part}.")
            if part in ("data", "input", "output", "eval")
            else [_plain_field(ClassifiersConfig, part)]
        )
    ]
    lines = [f"- `{flag}` (default {default}): {text}" for flag, default, text in rows]
    general = "- `--run-dir`, `--seed`, `--models.generator.name` ... any recipe field by dotted path"
    return "\n".join(["**Fields** (override the recipe's `classifiers:` section):", "", *lines, general])


def _plain_field(model, name: str) -> tuple[str, str, str]:
    field = model.model_fields[name]
    return f"--{name.replace('_', '-')}", repr(field.default), field.description or ""


def _run(config: Path | None, args: list[str], names: list[str] | None, force: bool):
    from constitutional import pipeline
    from constitutional.recipe import load_recipe, parse_overrides
    from constitutional.stages import CLASSIFIER_STAGES

    recipe = load_recipe(config, parse_overrides(args, SECTION))
    forced = (names or list(CLASSIFIER_STAGES)) if force else []
    outcomes = pipeline.run(recipe, names, force=forced, registry=CLASSIFIER_STAGES)
    print_outcomes(recipe.run_dir, outcomes)
    return recipe


def _print_evaluation(run_dir: str) -> None:
    from constitutional.classifiers.evaluation import ClassifierEvaluation
    from constitutional.stages.classifiers import CLF_EVAL

    path = CLF_EVAL.output(run_dir, "summary")
    evaluation = ClassifierEvaluation.model_validate_json(path.read_text(encoding="utf-8"))
    table = Table(
        "set", "classifier", "items", "AUROC", "recall", "FPR", "near-neighbour FPR", "held-out recall", "@1% FPR"
    )

    def cell(value: float | None, percent: bool = True) -> str:
        return "-" if value is None else (f"{value:.1%}" if percent else f"{value:.3f}")

    for result in evaluation.datasets:
        rows = [*result.inputs, *([result.stream.answers] if result.stream else [])]
        for m in rows:
            table.add_row(
                result.name,
                m.classifier,
                str(m.count),
                cell(m.auroc, False),
                cell(m.recall),
                cell(m.fpr),
                cell(m.near_neighbour_fpr),
                cell(m.held_out_recall),
                cell(m.recall_at_1pct_fpr),
            )
    out.print(table)
    out.print(f"report: [bold]{CLF_EVAL.output(run_dir, 'page').resolve()}[/]  details: {path}")


@clf_app.command("data", context_settings=OVERRIDES, epilog=_fields("constitution", "data"))
@friendly_errors
def data(ctx: typer.Context, config: ConfigOption = None, force: ForceOption = False) -> None:
    """Write the synthetic classifier data in two stages: the pool (the constitution's examples, generated requests,
    answers and paraphrases, a judged sample), then the examples (augmented, contested where the judge disagreed,
    split with no duplicate across splits). Changing only how the pool is augmented or split redoes only the second.

    Resumes where a previous run stopped. Example: `cai clf data --config recipes/classifiers.yaml --data.rounds 1`
    """
    _run(config, ctx.args, ["clf_generate", "clf_data"], force)


@clf_app.command("train", context_settings=OVERRIDES, epilog=_fields("train_on_contested", "input", "output"))
@friendly_errors
def train(
    ctx: typer.Context,
    config: ConfigOption = None,
    only: Annotated[str | None, typer.Option(help="Train only the 'input' or the 'output' classifier.")] = None,
    force: ForceOption = False,
) -> None:
    """Train the input classifier and the streaming output classifier on the data stage's train split, each with
    its threshold calibrated on the benign calibration split; saved as safetensors with a model card under
    RUN_DIR/model/. Example: `cai clf train --config recipes/classifiers.yaml --only input --input.epochs 1`
    """
    from constitutional.errors import InputError

    stages = {"input": ["clf_train_input"], "output": ["clf_train_output"], None: None}
    if only not in stages:
        raise InputError(f"--only {only!r}: give 'input' or 'output'", field="--only")
    _run(config, ctx.args, stages[only] or ["clf_train_input", "clf_train_output"], force)


@clf_app.command("eval", context_settings=OVERRIDES, epilog=_fields("eval"))
@friendly_errors
def evaluate(ctx: typer.Context, config: ConfigOption = None, force: ForceOption = False) -> None:
    """Measure the trained classifiers and the baselines (keyword filter, policy in the prompt) on the synthetic
    test split and on labelled JSONL/CSV sets: precision, recall, F1, AUROC, AUPRC, recall at 1% and 5% FPR,
    near-neighbour FPR, per category and wrapper (held-out families apart), detection latency of the stream.

    Writes RUN_DIR/clf_eval/summary.json and RUN_DIR/classifiers_report.html. Example:
    `cai clf eval --config recipes/classifiers.yaml --eval.datasets '[mine.csv]' --eval.policy-judges '[]'`
    """
    recipe = _run(config, ctx.args, ["clf_eval"], force)
    _print_evaluation(recipe.run_dir)


@clf_app.command("run", context_settings=OVERRIDES)
@friendly_errors
def run_all(
    ctx: typer.Context,
    recipe_path: Annotated[Path, typer.Argument(metavar="RECIPE", help="Recipe YAML; flags override it.")],
    stages: StagesOption = None,
    force: ForceOption = False,
) -> None:
    """Every classifier stage in order: data, input classifier, output classifier, evaluation. Complete stages are
    skipped, stopped ones resumed, changed ones redone. Example: `cai clf run recipes/classifiers.yaml`
    """
    recipe = _run(recipe_path, ctx.args, stages.split(",") if stages else None, force)
    if stages is None or "clf_eval" in stages:
        _print_evaluation(recipe.run_dir)


def _classifier_folder(path: Path) -> Path:
    """The folder holding input/ and output/: given itself, or a run directory that holds it."""
    from constitutional.stages.classifiers import CLF_TRAIN_INPUT

    inside = CLF_TRAIN_INPUT.output(path, "model").parent
    return inside if inside.is_dir() else path


@clf_app.command("score")
@friendly_errors
def score(
    folder: Annotated[Path, typer.Argument(help="A run directory, or the folder holding input/ and output/.")],
    prompt: Annotated[str, typer.Argument(help="The user's request.")],
    answer: Annotated[str | None, typer.Option(help="An answer to score with the output classifier.")] = None,
    generate: Annotated[
        bool, typer.Option(help="Generate an answer with the output classifier's backbone, the classifier attached.")
    ] = False,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate with --generate.")] = 96,
) -> None:
    """Screen a request with the input classifier; score an answer (--answer) token by token, or generate one with
    the streaming classifier attached (--generate) and show where it stopped and the score trace. Example:
    `cai clf score runs/classifiers "how do I kill a stuck process?" --generate`
    """
    from constitutional.classifiers import saved

    folder = _classifier_folder(folder)
    conversation = [{"role": "user", "content": prompt}]
    if (folder / saved.INPUT_DIR).is_dir():
        verdict = saved.load_input_classifier(folder / saved.INPUT_DIR).screen([conversation])[0]
        out.print(_verdict("input classifier", verdict))
    if answer is None and not generate:
        return
    stream = saved.load_output_classifier(folder / saved.OUTPUT_DIR)
    if answer is not None:
        scorer = stream.start(conversation)
        for piece in answer.split(" "):
            verdict = scorer.push(piece if not scorer.tokens else f" {piece}")
        out.print(_verdict(f"output classifier ({scorer.tokens} answer tokens)", verdict))
        _print_trace(scorer.scores, stream.threshold)
    if generate:
        from constitutional.classifiers.attached import generate_guarded
        from constitutional.models import SamplingParams

        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
        guarded = generate_guarded(stream, stream.lm, [conversation], params)[0]
        where = f"stopped after {guarded.stopped_at} tokens" if guarded.stopped_at else "not stopped"
        out.print(f"generated ({len(guarded.scores)} tokens scored, {where}):\n{guarded.text}")
        _print_trace(guarded.scores, stream.threshold)


def _verdict(name: str, verdict) -> str:
    flagged = "[bold red]FLAGGED[/]" if verdict.flagged else "[green]passed[/]"
    category = f" ({verdict.category})" if verdict.category else ""
    return f"{name}: score {verdict.score:.3f} {flagged}{category}"


def _print_trace(scores: list[float], threshold: float) -> None:
    """The per-token scores and their running maximum, the first token above the threshold marked."""
    peak, lines = 0.0, []
    for number, value in enumerate(scores, start=1):
        peak = max(peak, value)
        mark = (
            "  <- above threshold" if value > threshold and all(s <= threshold for s in scores[: number - 1]) else ""
        )
        lines.append(f"{number:4d} {value:.3f} running max {peak:.3f}{mark}")
    out.print(f"score trace (threshold {threshold:.3f}):\n" + "\n".join(lines))
