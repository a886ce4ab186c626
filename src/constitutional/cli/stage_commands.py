"""`cai sl generate`, `cai rl label`, ...: one command per stage definition, generated, plus `cai run`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from constitutional.cli.common import friendly_errors, out, print_outcomes

ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="Recipe YAML; flags override it.")]
ForceOption = Annotated[bool, typer.Option("--force", help="Remove the stage's outputs and redo it from scratch.")]
StagesOption = Annotated[
    str | None, typer.Option("--stages", help="Comma-separated stages to run (default: all, in pipeline order).")
]
OVERRIDES = {"allow_extra_args": True, "ignore_unknown_options": True}


def field_help(section: str) -> str:
    from constitutional.recipe import Recipe, describe_fields

    rows = describe_fields(Recipe.model_fields[section].annotation)
    lines = [f"- `{flag}` (default {default}): {text}" for flag, default, text in rows]
    general = "- `--run-dir`, `--seed`, `--constitution`, `--models.policy.name` ... any recipe field by dotted path"
    return "\n".join(["**Fields of this stage** (override any recipe value):", "", *lines, general])


def run_recipe(recipe_path: Path | None, args: list[str], section: str | None, names, force: bool):
    """Load the recipe with the command line's overrides, run the stages, print what each did."""
    from constitutional import distributed, pipeline
    from constitutional.recipe import load_recipe, parse_overrides
    from constitutional.stages import ORDER

    recipe = load_recipe(recipe_path, parse_overrides(args, section))
    forced = (names or ORDER) if force else []
    outcomes = pipeline.run(recipe, names, force=forced)
    if distributed.is_main():  # in a multi-process launch the others said their piece in one line each
        print_outcomes(recipe.run_dir, outcomes)
    return recipe


def print_evaluation(summary_path: Path) -> None:
    """The Elo tables and the harmfulness / evasiveness table of an evaluation summary."""
    from constitutional.records import EvalSummary

    summary = EvalSummary.model_validate_json(summary_path.read_text(encoding="utf-8"))
    quality = summary.judge_quality
    if quality is not None:
        verdict = "NOT ABOVE CHANCE: the judged figures below are noise" if quality.at_chance else "above chance"
        out.print(
            f"judge {quality.judge} on {quality.items}: accuracy {quality.accuracy:.3f} "
            f"[{quality.accuracy_low:.3f}, {quality.accuracy_high:.3f}], ECE {quality.ece:.3f} — {verdict}"
        )
    for criterion, rows in summary.elo.items():
        table = Table("model", "Elo", "interval", "comparisons", title=f"{criterion} Elo (judge: {summary.judge})")
        for row in sorted(rows, key=lambda r: -r.elo.value):
            interval = f"{row.elo.low:+.0f} .. {row.elo.high:+.0f}"
            table.add_row(row.model, f"{row.elo.value:+.0f}", interval, str(row.comparisons))
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
    out.print(f"details: {summary_path}")


def _stage_command(stage):
    def command(ctx: typer.Context, config: ConfigOption = None, force: ForceOption = False) -> None:
        from constitutional.stages import EVALUATE

        recipe = run_recipe(config, ctx.args, stage.section, [stage.name], force)
        if stage is EVALUATE:
            print_evaluation(EVALUATE.output(recipe.run_dir, "summary"))

    command.__name__ = stage.name
    command.__doc__ = f"{stage.summary}\n\nResumes where a previous run stopped. Example: `{stage.example}`"
    return friendly_errors(command)


def add_stage_commands(groups: dict[str, typer.Typer]) -> None:
    """A command for every stage that runs from a recipe, in its group (`sl`, `rl`, `pm`, `eval`)."""
    from constitutional.stages import STAGES

    for stage in STAGES.values():
        if stage.section is None:
            continue  # the report runs alone from a run directory: `cai report RUN_DIR`
        group, name = stage.command.split()
        groups[group].command(name, context_settings=OVERRIDES, epilog=field_help(stage.section))(
            _stage_command(stage)
        )


def add_pipeline_commands(app: typer.Typer) -> None:
    @app.command("run", context_settings=OVERRIDES)
    @friendly_errors
    def run(
        ctx: typer.Context,
        recipe_path: Annotated[Path, typer.Argument(metavar="RECIPE", help="Recipe YAML; flags override it.")],
        stages: StagesOption = None,
        force: ForceOption = False,
        dry_run: Annotated[
            bool,
            typer.Option(
                "--dry-run",
                help="Check every model, server, input file and the run directory, print each stage's memory "
                "estimate, and stop (exit 2 on a problem). Writes nothing.",
            ),
        ] = False,
    ) -> None:
        """Run a recipe's stages in order: SL generate, SL train, sample, label, PM, RL, evaluate, report.

        A stage complete for the same fingerprint is skipped, a stage stopped part-way resumes (from records or its
        last training checkpoint), a stage whose fingerprint changed is redone. Decisions go to
        `RUN_DIR/stages.log`. Example: `cai run recipes/demo.yaml --stages sl_generate,sl_train --run-dir runs/mine`;
        check first with `cai run recipes/gpu.yaml --dry-run`.
        """
        if dry_run:
            from constitutional.cli.dryrun import dry_run as check

            check(recipe_path, ctx.args, stages)
            return
        _run_and_point(recipe_path, ctx, stages, force)

    @app.command("demo", context_settings=OVERRIDES)
    @friendly_errors
    def demo(ctx: typer.Context, stages: StagesOption = None, force: ForceOption = False) -> None:
        """The whole pipeline on the embedded models with the demo recipe (about 10 minutes on a 2-core laptop).

        Same as `cai run` on the packaged demo recipe; flags override it. Example: `cai demo --run-dir runs/demo2`
        """
        from constitutional.recipe import DEMO_RECIPE

        _run_and_point(DEMO_RECIPE, ctx, stages, force)

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
        from constitutional.stages.definitions import write_report

        summary = write_report(run_dir, output)
        missing = ", ".join(summary["missing"]) or "none"
        out.print(f"report: [bold]{Path(summary['path']).resolve()}[/] (sections not run yet: {missing})")


def _run_and_point(path: Path, ctx: typer.Context, stages: str | None, force: bool) -> None:
    from constitutional.stages.definitions import REPORT

    recipe = run_recipe(path, ctx.args, None, stages.split(",") if stages else None, force)
    page = REPORT.output(recipe.run_dir, "page")
    if page.exists():
        out.print(f"report: [bold]{page.resolve()}[/]")
