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


# ---- RL-CAI: AI feedback (rl label) and multiple-choice evaluation (eval mc) -----------------------------------


# ---- preference model (pm train, pm score) ---------------------------------------------------------------------


# ---- RL against the preference model (rl train) ----------------------------------------------------------------


# ---- evaluation (eval compare) and the report ------------------------------------------------------------------


# ---- the whole pipeline ----------------------------------------------------------------------------------------


def main() -> None:
    app(prog_name="cai")


if __name__ == "__main__":
    sys.exit(main())
