"""`cai`: the command line. Thin: parse, call the library, print."""

from __future__ import annotations

import errno
import functools
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from constitutional.errors import InputError, ModelUnavailableError

app = typer.Typer(no_args_is_help=True, rich_markup_mode="markdown", help="Constitutional AI on your own models.")
constitution_app = typer.Typer(no_args_is_help=True, help="List, show and validate constitutions.")
sl_app = typer.Typer(no_args_is_help=True, help="SL-CAI: critique -> revision, then SFT on the revisions.")
models_app = typer.Typer(no_args_is_help=True, help="The embedded default models.")
rl_app = typer.Typer(no_args_is_help=True, help="RL-CAI: sample answer pairs, label them with AI feedback, RL.")
pm_app = typer.Typer(no_args_is_help=True, help="The preference model: train on soft labels, score answers.")
eval_app = typer.Typer(no_args_is_help=True, help="Evaluate: multiple-choice accuracy and calibration, Elo.")
app.add_typer(constitution_app, name="constitution")
app.add_typer(sl_app, name="sl")
app.add_typer(rl_app, name="rl")
app.add_typer(pm_app, name="pm")
app.add_typer(eval_app, name="eval")
app.add_typer(models_app, name="models")
console = Console(stderr=True)
out = Console()

ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="Recipe YAML; flags override it.")]
ForceOption = Annotated[bool, typer.Option("--force", help="Redo the stage from scratch even if complete.")]
OVERRIDES = {"allow_extra_args": True, "ignore_unknown_options": True}


def friendly_errors(command):
    """Bad input and interruptions end with one clear message, not a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except InputError as err:
            console.print(f"[bold red]error:[/] {err}", highlight=False)
            raise typer.Exit(2) from None
        except ModelUnavailableError as err:
            console.print(f"[bold red]error:[/] {err}\nrecords written so far are kept; rerun to resume.")
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]: records written so far are kept; rerun the same command to resume.")
            raise typer.Exit(130) from None
        except OSError as err:
            if err.errno != errno.ENOSPC:
                raise
            console.print(
                f"[bold red]error:[/] disk full writing {err.filename or 'the run directory'}: "
                "records written so far are kept; free some space and rerun to resume."
            )
            raise typer.Exit(1) from None

    return wrapper


def _field_help(section: str) -> str:
    from constitutional.recipe import Recipe, describe_fields

    rows = describe_fields(Recipe.model_fields[section].annotation)
    lines = [f"- `{flag}` (default {default}): {text}" for flag, default, text in rows]
    general = "- `--run-dir`, `--seed`, `--constitution`, `--models.policy.name` ... any recipe field by dotted path"
    return "\n".join(["**Fields of this stage** (override any recipe value):", "", *lines, general])


def _recipe(config: Path | None, ctx: typer.Context, section: str):
    from constitutional.recipe import load_recipe, parse_overrides

    return load_recipe(config, parse_overrides(ctx.args, section))


def run_stages(recipe, names: list[str] | None, force: bool) -> None:
    """Run pipeline stages and print what each did (skipped, ran, resumed) and how long it took."""
    from constitutional import pipeline

    forced = (names or list(pipeline.STAGES)) if force else []
    outcomes = pipeline.run(recipe, names, force=forced)
    table = Table("stage", "action", "seconds", "summary", title=f"run directory: {recipe.run_dir}")
    for o in outcomes:
        summary = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in o.summary.items())
        table.add_row(o.name, o.action, f"{o.seconds:.1f}", summary)
    console.print(table)


# ---- constitution ---------------------------------------------------------------------------------------------


@constitution_app.command("list")
@friendly_errors
def constitution_list() -> None:
    """List the built-in constitutions.

    Example: `cai constitution list`
    """
    from constitutional.constitution import builtin_names, load_constitution

    table = Table("name", "version", "critique/revision", "comparison", "demos", "description")
    for name in builtin_names():
        c = load_constitution(name)
        demos = len(c.demonstrations.critique_revision) + len(c.demonstrations.comparison)
        table.add_row(
            c.name,
            c.version,
            str(len(c.critique_revision)),
            str(len(c.comparison)),
            str(demos),
            c.description.split(". ")[0],
        )
    out.print(table)


@constitution_app.command("show")
@friendly_errors
def constitution_show(name: Annotated[str, typer.Argument(help="Built-in name or path to a YAML file.")]) -> None:
    """Print every principle of a constitution.

    Example: `cai constitution show harmless`
    """
    from constitutional.constitution import load_constitution

    c = load_constitution(name)
    out.print(f"[bold]{c.tag}[/] — {c.description}\n")
    table = Table("id", "critique", "revision", title="critique / revision principles", show_lines=True)
    for p in c.critique_revision:
        table.add_row(p.id, p.critique, p.revision)
    out.print(table)
    table = Table("id", "comparison", title="comparison principles")
    for p in c.comparison:
        table.add_row(p.id, p.comparison)
    out.print(table)


@constitution_app.command("validate")
@friendly_errors
def constitution_validate(path: Annotated[Path, typer.Argument(help="Constitution YAML file.")]) -> None:
    """Check a constitution file against the schema; exits non-zero naming the file, line and field.

    Example: `cai constitution validate my_constitution.yaml`
    """
    from constitutional.constitution import load_constitution

    c = load_constitution(path)
    out.print(
        f"ok: {c.tag}: {len(c.critique_revision)} critique/revision and {len(c.comparison)} comparison "
        f"principles, {len(c.demonstrations.critique_revision)}+{len(c.demonstrations.comparison)} demos"
    )


# ---- models ---------------------------------------------------------------------------------------------------


@models_app.command("list")
@friendly_errors
def models_list() -> None:
    """The embedded models, the package each comes from, and whether its safetensors cache exists.

    Example: `cai models list`
    """
    from constitutional.models.embedded import EMBEDDED, cache_root

    table = Table("name", "package", "cached", "description")
    for name, model in EMBEDDED.items():
        cached = (cache_root() / name / "config.json").exists()
        table.add_row(name, model.distribution, "yes" if cached else "no (converts on first use)", model.description)
    out.print(table)


# ---- SL-CAI ---------------------------------------------------------------------------------------------------


@sl_app.command("generate", context_settings=OVERRIDES, epilog=_field_help("sl"))
@friendly_errors
def sl_generate(ctx: typer.Context, config: ConfigOption = None, force: ForceOption = False) -> None:
    """Answer red-team prompts, then critique and revise each answer N times under random principles.

    Resumes where a previous run stopped. Example:
    `cai sl generate --config recipes/demo.yaml --num-revisions 2 --run-dir runs/try`
    """
    run_stages(_recipe(config, ctx, "sl"), ["sl_generate"], force)


@sl_app.command("train", context_settings=OVERRIDES, epilog=_field_help("sl_train"))
@friendly_errors
def sl_train(ctx: typer.Context, config: ConfigOption = None, force: ForceOption = False) -> None:
    """Fine-tune the policy on its revisions with TRL's SFTTrainer (LoRA by default); saves safetensors.

    Example: `cai sl train --config recipes/demo.yaml --max-steps 10`
    """
    run_stages(_recipe(config, ctx, "sl_train"), ["sl_train"], force)


@sl_app.command("export")
@friendly_errors
def sl_export(
    run_dir: Annotated[Path, typer.Argument(help="Run directory holding sl_generate records.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write.")],
    fmt: Annotated[str, typer.Option("--format", help="records | sft (as JSONL, parquet or hf dataset).")] = "sft",
    as_: Annotated[str, typer.Option("--as", help="jsonl | parquet | hf (save_to_disk).")] = "jsonl",
) -> None:
    """Export SL-CAI records, or the SFT rows made from them, as JSONL, Parquet or a saved HF dataset.

    Example: `cai sl export runs/demo --format sft --as parquet -o sft.parquet`
    """
    from constitutional.records import SLRecord
    from constitutional.sl import STAGE
    from constitutional.sl_train import sft_examples
    from constitutional.store import RunStore, to_dataset

    with RunStore(run_dir) as store:
        records = store.stage(STAGE).records(SLRecord)
        seed = store.manifest()["seed"]
    if fmt not in ("records", "sft") or as_ not in ("jsonl", "parquet", "hf"):
        raise InputError("choose --format records|sft and --as jsonl|parquet|hf")
    rows = [r.model_dump() for r in records] if fmt == "records" else sft_examples(records, "final", 1.0, seed)
    dataset = to_dataset(rows)
    if as_ == "hf":
        dataset.save_to_disk(str(output))
    elif as_ == "parquet":
        dataset.to_parquet(str(output))
    else:
        dataset.to_json(str(output), lines=True)
    console.print(f"[green]wrote[/] {len(rows)} rows to {output}")


# ---- RL-CAI: response pairs (rl sample) ---------------------------------------------------------------------


@rl_app.command("sample", context_settings=OVERRIDES, epilog=_field_help("sample"))
@friendly_errors
def rl_sample(ctx: typer.Context, config: ConfigOption = None, force: ForceOption = False) -> None:
    """Sample two answers per red-team and helpfulness prompt from the policy (the SL-CAI model once trained).

    Resumes where a previous run stopped. Example:
    `cai rl sample --config recipes/demo.yaml --max-prompts 8 --run-dir runs/try`
    """
    run_stages(_recipe(config, ctx, "sample"), ["rl_sample"], force)


# ---- RL-CAI: AI feedback (rl label) and multiple-choice evaluation (eval mc) -----------------------------------


def _print_label_stats(run_dir: str) -> None:
    from constitutional.feedback import STAGE, label_stats
    from constitutional.records import ComparisonRecord
    from constitutional.store import RunStore

    with RunStore(run_dir) as store:
        stats = label_stats(store.stage(STAGE).records(ComparisonRecord))
    table = Table("statistic", "value", title="AI feedback labels")
    for key, value in stats.items():
        table.add_row(key, "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value))
    out.print(table)
    out.print("p_a_histogram counts labels in ten bins of P(a better), from 0-0.1 to 0.9-1.0.")


@rl_app.command("label", context_settings=OVERRIDES, epilog=_field_help("label"))
@friendly_errors
def rl_label(ctx: typer.Context, config: ConfigOption = None, force: ForceOption = False) -> None:
    """Label each sampled pair with the feedback model's probability that answer a is the better one.

    Asks a multiple-choice question per pair under a randomly drawn principle and reads P((A)) vs P((B)) from
    one scoring pass; prints the label statistics (spread, share clamped, position bias). Resumes. Example:
    `cai rl label --config recipes/demo.yaml --num-principles 4 --debias true`
    """
    recipe = _recipe(config, ctx, "label")
    run_stages(recipe, ["rl_label"], force)
    _print_label_stats(recipe.run_dir)


@eval_app.command("mc")
@friendly_errors
def eval_mc(
    items: Annotated[str, typer.Argument(metavar="FILE", help="JSONL items, or builtin:hhh-ours (66 of our own).")],
    model: Annotated[
        str, typer.Option("--model", help="Model to evaluate; the default is the demo recipe's feedback model.")
    ] = "gemma3-270m",
    backend: Annotated[str, typer.Option("--backend", help="transformers | openai.")] = "transformers",
    base_url: Annotated[str | None, typer.Option("--base-url", help="Server URL for --backend openai.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Sequences per forward pass.")] = 16,
    principles: Annotated[
        int, typer.Option("--principles", min=1, help="Ensemble: average over K principles drawn per item.")
    ] = 1,
    debias: Annotated[bool, typer.Option("--debias", help="Score both option orders and average them.")] = False,
    constitution: Annotated[
        str, typer.Option("--constitution", help="Where ensemble principles come from.")
    ] = "harmless",
    seed: Annotated[int, typer.Option("--seed", help="Seeds the principle draws.")] = 0,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write a reliability diagram (PNG) here.")] = None,
) -> None:
    """Multiple-choice accuracy, mean probability on the right answer, and calibration (reliability bins, ECE).

    Items are `{"prompt", "corrects", "incorrects"}` lines (the format of Anthropic's HHH evaluation). Plain
    scoring uses each prompt as it is; `--principles K` and `--debias` re-render items that also carry
    `conversation`, `responses` and `correct` as AI-feedback questions. Example:
    `cai eval mc builtin:hhh-ours --model smollm2-135m-instruct --principles 4 --debias --plot hhh.png`
    """
    from pydantic import ValidationError

    from constitutional.constitution import load_constitution
    from constitutional.evaluate import hhh
    from constitutional.models import ModelSpec, load_model

    loaded_items = hhh.load_items(items)
    try:
        spec = ModelSpec(name=model, backend=backend, base_url=base_url, batch_size=batch_size)
    except ValidationError as err:
        first = err.errors()[0]
        raise InputError(first["msg"], field=".".join(str(p) for p in first["loc"])) from None
    scores = hhh.score_items(load_model(spec), loaded_items, load_constitution(constitution), principles, debias, seed)
    result = hhh.summarize(scores)
    mode = "plain" if principles == 1 and not debias else f"principles={principles}, debias={debias}"
    table = Table("items", "re-rendered", "accuracy", "mean p(correct)", "ECE", title=f"{items} — {model} ({mode})")
    table.add_row(
        str(result.items),
        str(result.rerendered),
        f"{result.accuracy:.3f}",
        f"{result.mean_p_correct:.3f}",
        f"{result.ece:.3f}",
    )
    out.print(table)
    if result.by_category:
        out.print("accuracy by category: " + ", ".join(f"{c} {a:.3f}" for c, a in result.by_category.items()))
    bins = Table("confidence bin", "items", "mean confidence", "accuracy", title="calibration (reliability bins)")
    for row in result.bins:
        bins.add_row(f"{row.low:.1f}-{row.high:.1f}", str(row.count), f"{row.confidence:.3f}", f"{row.accuracy:.3f}")
    out.print(bins)
    if plot is not None:
        hhh.reliability_diagram(result, plot, f"{model} on {items} ({mode})")
        console.print(f"[green]wrote[/] {plot}")


# ---- preference model (pm train, pm score) ---------------------------------------------------------------------


@pm_app.command("train", context_settings=OVERRIDES, epilog=_field_help("pm"))
@friendly_errors
def pm_train(ctx: typer.Context, config: ConfigOption = None, force: ForceOption = False) -> None:
    """Train the preference model on the soft labels (TRL RewardTrainer); reports held-out accuracy and calibration.

    Example: `cai pm train --config recipes/demo.yaml --max-steps 20` (or `--preference-data prefs.jsonl`)
    """
    run_stages(_recipe(config, ctx, "pm"), ["pm_train"], force)


@pm_app.command("score")
@friendly_errors
def pm_score(
    model_dir: Annotated[Path, typer.Argument(help="A preference model folder, e.g. RUN_DIR/preference_model.")],
    input_path: Annotated[
        Path | None, typer.Option("--input", "-i", help='JSONL of {"prompt" or "messages", "response"}.')
    ] = None,
    pairs: Annotated[Path | None, typer.Option("--pairs", help="Score both answers of this run's pairs.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the rows with scores as JSONL.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Sequences per forward pass.")] = 16,
) -> None:
    """Score answers with a trained preference model (higher = preferred).

    Example: `cai pm score runs/demo/preference_model --input answers.jsonl -o scored.jsonl`
    """
    import json

    from constitutional import preference

    if (input_path is None) == (pairs is None):
        raise InputError("give exactly one of --input FILE.jsonl or --pairs RUN_DIR")
    model = preference.PreferenceModel(model_dir, batch_size)
    if input_path is not None:
        rows, conversations, responses = preference.load_responses(input_path)
        scores = model.score(conversations, responses)
        rows = [row | {"score": value} for row, value in zip(rows, scores, strict=True)]
        columns = ["score"]
    else:
        from constitutional.pairs import STAGE
        from constitutional.records import PairRecord
        from constitutional.store import RunStore

        with RunStore(pairs) as store:
            records = store.stage(STAGE).records(PairRecord)
        if not records:
            raise InputError("the run has no pairs", path=pairs, hint="run `cai rl sample` first")
        both = model.score([r.prompt for r in records] * 2, [r.a for r in records] + [r.b for r in records])
        rows = [
            {"id": r.id, "kind": r.kind, "score_a": a, "score_b": b}
            for r, a, b in zip(records, both[: len(records)], both[len(records) :], strict=True)
        ]
        columns = ["score_a", "score_b"]
    if output is not None:
        output.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        console.print(f"[green]wrote[/] {len(rows)} scored rows to {output}")
        return
    table = Table("#", "id", *columns, title=f"scores from {model_dir}")
    for number, row in enumerate(rows, start=1):
        table.add_row(str(number), str(row.get("id", "")), *(f"{row[c]:.3f}" for c in columns))
    out.print(table)


# ---- RL against the preference model (rl train) ----------------------------------------------------------------


@rl_app.command("train", context_settings=OVERRIDES, epilog=_field_help("rl"))
@friendly_errors
def rl_train(ctx: typer.Context, config: ConfigOption = None, force: ForceOption = False) -> None:
    """RL the policy against the preference model (TRL RLOO, or --algo grpo), or DPO on labelled pairs (--algo dpo).

    Starts from the SL-CAI model when the run has one; saves the merged model as safetensors to RUN_DIR/rl_model.
    Example: `cai rl train --config recipes/demo.yaml --algo rloo --max-steps 4`
    """
    run_stages(_recipe(config, ctx, "rl"), ["rl_train"], force)


# ---- evaluation (eval compare) and the report ------------------------------------------------------------------


@eval_app.command("compare", context_settings=OVERRIDES, epilog=_field_help("evaluate"))
@friendly_errors
def eval_compare(ctx: typer.Context, config: ConfigOption = None, force: ForceOption = False) -> None:
    """Compare the base, SL-CAI and RL-CAI models on held-out prompts: Elo, harmfulness, evasiveness, revisions.

    Resumes where a previous run stopped; writes RUN_DIR/evaluate/summary.json. Example:
    `cai eval compare --config recipes/demo.yaml --max-prompts 4`
    """
    from constitutional.records import EvalSummary

    recipe = _recipe(config, ctx, "evaluate")
    run_stages(recipe, ["evaluate"], force)
    path = Path(recipe.run_dir) / "evaluate" / "summary.json"
    summary = EvalSummary.model_validate_json(path.read_text(encoding="utf-8"))
    for criterion, rows in summary.elo.items():
        table = Table("model", "Elo", "interval", "comparisons", title=f"{criterion} Elo (judge: {summary.judge})")
        for row in sorted(rows, key=lambda r: -r.elo.value):
            table.add_row(
                row.model, f"{row.elo.value:+.0f}", f"{row.elo.low:+.0f} .. {row.elo.high:+.0f}", str(row.comparisons)
            )
        out.print(table)
    table = Table("model", "temperature", "judge harm 0-4", "PM score", "evasive: judge", "evasive: lexical")
    evasive = {row.model: row for row in summary.evasiveness}
    for row in summary.harmfulness:
        e = evasive.get(row.model)
        table.add_row(
            row.model,
            f"{row.temperature:g}",
            f"{row.judge_score.value:.2f}",
            f"{row.pm_score.value:.2f}" if row.pm_score else "-",
            f"{e.judge_share.value:.0%}" if e else "-",
            f"{e.lexical_share.value:.0%}" if e else "-",
        )
    out.print(table)
    out.print(f"details: {path}")


@app.command("report")
@friendly_errors
def report(
    run_dir: Annotated[Path, typer.Argument(help="Run directory to report on.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Where to write the HTML file.")] = None,
) -> None:
    """Write one self-contained HTML report (Elo, revision curve, feedback calibration, SL-CAI trace browser).

    Works after any prefix of the pipeline: a section whose stage has not run names the command that makes it.
    Writes RUN_DIR/report.html unless --output is given. Example: `cai report runs/demo`
    """
    from constitutional.evaluate.report import write_report

    summary = write_report(run_dir, output)
    missing = ", ".join(summary["missing"]) or "none"
    out.print(f"report: [bold]{Path(summary['path']).resolve()}[/] (sections not run yet: {missing})")


# ---- the whole pipeline ----------------------------------------------------------------------------------------


StagesOption = Annotated[
    str | None, typer.Option("--stages", help="Comma-separated stages to run (default: all, in pipeline order).")
]


@app.command("run", context_settings=OVERRIDES)
@friendly_errors
def run(
    ctx: typer.Context,
    recipe_path: Annotated[Path, typer.Argument(metavar="RECIPE", help="Recipe YAML; flags override it.")],
    stages: StagesOption = None,
    force: ForceOption = False,
) -> None:
    """Run a recipe's stages in order: SL generate, SL train, sample, label, PM, RL, evaluate, report.

    A stage already complete for the same config is skipped, a stage stopped part-way resumes, a stage whose config
    (or an upstream stage's) changed is redone. Decisions go to `RUN_DIR/stages.log`. Example:
    `cai run recipes/demo.yaml --stages sl_generate,sl_train --run-dir runs/mine`
    """
    _run_recipe(recipe_path, ctx, stages, force)


@app.command("demo", context_settings=OVERRIDES)
@friendly_errors
def demo(ctx: typer.Context, stages: StagesOption = None, force: ForceOption = False) -> None:
    """The whole pipeline on the embedded models with the demo recipe (about 20 minutes on a 2-core laptop).

    Same as `cai run` on the packaged demo recipe; flags override it. Example: `cai demo --run-dir runs/demo2`
    """
    from constitutional.recipe import DEMO_RECIPE

    _run_recipe(DEMO_RECIPE, ctx, stages, force)


def _run_recipe(path: Path, ctx: typer.Context, stages: str | None, force: bool) -> None:
    """Run the recipe's stages with the command line's overrides, then say where the report is."""
    from constitutional.recipe import load_recipe, parse_overrides

    recipe = load_recipe(path, parse_overrides(ctx.args, None))
    run_stages(recipe, stages.split(",") if stages else None, force)
    report = Path(recipe.run_dir) / "report.html"
    if report.exists():
        out.print(f"report: [bold]{report.resolve()}[/]")


def main() -> None:
    app(prog_name="cai")


if __name__ == "__main__":
    sys.exit(main())
