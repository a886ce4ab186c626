"""`cai run RECIPE --dry-run`: the plan of `constitutional.dryrun`, printed; exit code 2 when it found a problem."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from constitutional.cli.common import out
from constitutional.memory import GENERATION_STORE_BYTES, gib


def dry_run(recipe_path: Path, args: list[str], stages: str | None) -> None:
    """Check the recipe as `cai run` would run it (flags included) and print the plan; exit 2 on a problem."""
    from constitutional import dryrun
    from constitutional.recipe import load_recipe, parse_overrides

    recipe = load_recipe(recipe_path, parse_overrides(args, None))
    plan = dryrun.plan_run(recipe, stages.split(",") if stages else None)
    print_plan(plan, recipe_path)
    if plan.errors:
        raise typer.Exit(2)


def _size(value: int | None) -> str:
    return "-" if value is None else gib(value)


def print_plan(plan, recipe_path: Path) -> None:
    """One table per stage, then each problem on one line (errors name the recipe file and field)."""
    from constitutional.dryrun import PROMPT_TOKENS

    for stage in plan.stages:
        if not stage.rows:
            out.print(f"{stage.name} ({stage.action}): loads nothing", highlight=False)
            continue
        title = f"{stage.name} ({stage.action}): peak {_size(stage.peak)}"
        table = Table(
            "field", "model", "does", "where", "dtype", "weights", "grads+optimizer", "KV cache", title=title
        )
        for row in stage.rows:
            sized = row.weights is not None
            table.add_row(
                row.use.place,
                row.use.spec.name,
                row.use.work,
                row.where,
                row.use.dtype if sized else "-",
                _size(row.weights) if sized else row.note,
                _size(row.training),
                _size(row.kv),
            )
        out.print(table)
    out.print(
        f"Per process. KV cache: {PROMPT_TOKENS} prompt tokens per sequence + the tokens generated, and for "
        f"generation on the transformers backend the {gib(GENERATION_STORE_BYTES)} store of what earlier calls read. "
        "Activations are not counted; ZeRO-2 divides grads+optimizer by the number of processes, ZeRO-3 the weights "
        "too.",
        highlight=False,
        soft_wrap=True,
    )
    for warning in plan.warnings:
        out.print(f"[yellow]warning:[/] {escape(f'{recipe_path}: {warning}')}", highlight=False, soft_wrap=True)
    for error in plan.errors:
        line = error.replace("\n  -> ", " -> ")
        out.print(f"[bold red]error:[/] {escape(f'{recipe_path}: {line}')}", highlight=False, soft_wrap=True)
    verdict = f"{len(plan.errors)} problem(s) to fix before running" if plan.errors else "ready to run"
    out.print(f"dry run: {verdict}; nothing was written", highlight=False)
