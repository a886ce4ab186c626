"""`cai export` (a run's data for TRL, verl or OpenRLHF, with a reward) and `cai reward serve` (the reward over
HTTP, as OpenRLHF's remote reward model)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.table import Table

from constitutional.cli.common import console, friendly_errors, out

reward_app = typer.Typer(no_args_is_help=True, help="Rewards for other trainers: our preference model or judge.")


@friendly_errors
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (it is only read).")],
    fmt: Annotated[Literal["trl", "verl", "openrlhf"], typer.Option("--format", "-f", help="trl | verl | openrlhf.")],
    to: Annotated[Path, typer.Option("--to", help="New or empty folder to write (or an earlier export, --force).")],
    as_: Annotated[
        Literal["jsonl", "parquet"] | None,
        typer.Option("--as", help="jsonl | parquet (default: parquet for verl, jsonl otherwise)."),
    ] = None,
    test_share: Annotated[
        float, typer.Option("--test-share", min=0.0, max=0.99, help="Share of record ids held out as the test split.")
    ] = 0.1,
    reward: Annotated[
        Literal["auto", "pm", "judge", "none"],
        typer.Option(
            "--reward",
            help="pm: the run's preference model; judge: the recipe's judge under its constitution; "
            "auto: pm when the run has one.",
        ),
    ] = "auto",
    config: Annotated[
        Path | None, typer.Option("--config", help="Recipe naming the judge, constitution and label settings.")
    ] = None,
    judge_mode: Annotated[
        Literal["compare", "rate"],
        typer.Option("--judge-mode", help="compare: vs the run's answer to the prompt; rate: follows the principle."),
    ] = "compare",
    force: Annotated[bool, typer.Option("--force", help="Replace an earlier export in --to.")] = False,
) -> None:
    """Write a run's prompts, SFT rows (final revisions, as `cai sl export --format sft`) and labelled preferences
    in the format TRL, verl or OpenRLHF reads, with a manifest (export.json), a README of the framework's commands
    and a reward file for it (the preference model, or the constitution-conditioned judge).

    Examples:

    `cai export runs/demo --format trl --to exports/trl`

    `cai export runs/demo --format verl --to exports/verl --reward pm`

    `cai export runs/demo --format openrlhf --to exports/openrlhf --reward judge --config recipes/demo.yaml`
    """
    from constitutional.export.writer import export_run, reward_spec

    spec = reward_spec(reward, run_dir, config, judge_mode)
    manifest = export_run(run_dir, fmt, to, file_type=as_, test_share=test_share, reward=spec, force=force)
    table = Table("file", "rows", title=f"{fmt} export of {run_dir} in {to}")
    for name, rows in manifest.files.items():
        table.add_row(name, str(rows))
    out.print(table)
    for name, reason in manifest.not_written.items():
        console.print(f"[yellow]not written[/] {name}: {reason}")
    incomplete = [stage for stage, found in manifest.stages.items() if found["status"] != "complete"]
    if incomplete:
        console.print(f"[yellow]note[/]: read from stages still running: {', '.join(incomplete)}")
    if spec is None:
        console.print("[yellow]no reward[/]: the run has no preference model; --reward judge uses a judge instead")
    else:
        console.print(f"[green]reward[/] {spec.scorer}: {to}/{manifest.reward_module} (bound to {to}/reward.json)")
        if getattr(spec, "mode", None) == "compare" and manifest.prompts_without_reference:
            console.print(
                f"[yellow]note[/]: {manifest.prompts_without_reference} prompts have no answer from the run to "
                "compare with; the judge refuses completions to them (label their pairs, or use --judge-mode rate)"
            )
    console.print(f"[green]wrote[/] {to}/export.json; commands in {to}/README.md")


@reward_app.command("serve")
@friendly_errors
def serve(
    reward: Annotated[Path, typer.Argument(help="The reward.json `cai export` wrote, or a preference model folder.")],
    host: Annotated[str, typer.Option("--host", help="Address to listen on (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 5000,
) -> None:
    """Serve a reward over HTTP the way OpenRLHF's remote reward model is called: POST /get_reward with
    {"query", "prompts", "labels"} answers {"rewards", "scores", "extra_logs"}; GET /health.

    Example: `cai reward serve exports/openrlhf/reward.json --port 5000`, then train with
    `--reward.remote_url http://127.0.0.1:5000/get_reward`
    """
    import uvicorn

    from constitutional.export.openrlhf_reward import reward_app as make_app

    app = make_app(reward)
    console.print(f"[green]serving[/] {reward} at http://{host}:{port}/get_reward")
    uvicorn.run(app, host=host, port=port, log_level="warning")
