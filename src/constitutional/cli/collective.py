"""`cai ccai build`: a public conversation's votes -> a constitution whose principles cite their statements."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from constitutional.cli.common import friendly_errors, out, print_outcomes

ccai_app = typer.Typer(no_args_is_help=True, help="Collective Constitutional AI: a constitution from public votes.")


@ccai_app.command("build")
@friendly_errors
def build(
    source: Annotated[Path, typer.Argument(help="A Polis export folder, or a folder of statements + votes files.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The constitution YAML to write.")],
    rule: Annotated[str | None, typer.Option(help="group-aware (default) | every-group | majority.")] = None,
    threshold: Annotated[float | None, typer.Option(help="Agreement needed (rule's default).")] = None,
    min_votes: Annotated[int | None, typer.Option(help="Fewer votes: left out of groups (7).")] = None,
    max_groups: Annotated[int | None, typer.Option(help="Largest number of opinion groups tried (5).")] = None,
    merge: Annotated[bool, typer.Option(help="Merge near-duplicate statements with the embedded MiniLM.")] = True,
    name: Annotated[str | None, typer.Option(help="The constitution's name (default: from the folder).")] = None,
    writer: Annotated[
        str | None, typer.Option(help="A model that drafts each principle (checked; templates otherwise).")
    ] = None,
    report: Annotated[Path | None, typer.Option(help="Also write the HTML page here.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seeds k-means.")] = None,
) -> None:
    """Opinion groups from the votes (PCA + k-means, the Polis way), statements kept by consensus, principles
    written with their provenance (`<output>.provenance.json`). Example:
    `cai ccai build ../shared/polis/brexit-consensus -o brexit.yaml --report brexit.html`
    """
    from constitutional import collective
    from constitutional.models import load_model, model_spec

    config = collective.config_from(
        rule=rule, threshold=threshold, min_votes=min_votes, max_groups=max_groups, merge=merge, name=name, seed=seed
    )
    drafter = load_model(model_spec(name=writer)) if writer else None
    result = collective.build(source, output, config=config, writer=drafter, report=report)
    table = Table("figure", "value", title=f"collective constitution from {source}")
    for key, value in result.summary().items():
        table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
    out.print(table)


@ccai_app.command("compare")
@friendly_errors
def compare(
    spec: Annotated[Path, typer.Argument(help="A comparison spec YAML (see recipes/collective.yaml).")],
    export: Annotated[Path | None, typer.Option(help="Export folder (replaces the spec's).")] = None,
    run_dir: Annotated[Path | None, typer.Option("--run-dir", help="Where it all goes (replaces the spec's).")] = None,
) -> None:
    """Train with the collective constitution and with a built-in one, then set the two side by side: Elo per
    criterion, and both models' adherence to both constitutions as the judge sees it. Reruns skip finished work.
    Example: `cai ccai compare recipes/collective.yaml --export ../shared/polis/brexit-consensus`
    """
    from constitutional import compare as comparison

    result = comparison.run(comparison.load_spec(spec, export=export, run_dir=run_dir))
    for side, outcomes in result.outcomes.items():
        print_outcomes(result.summary.runs[side].run_dir, outcomes)
    table = Table("figure", "value", title="collective vs built-in constitution")
    for key, value in result.headline().items():
        table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
    out.print(table)
