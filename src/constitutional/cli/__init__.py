"""`cai`: the command line. Thin: parse, call the library, print. Stage commands come from the stage definitions."""

from __future__ import annotations

from typing import Annotated

import typer

from constitutional.cli import common, tools
from constitutional.cli.classifiers import clf_app
from constitutional.cli.collective import ccai_app
from constitutional.cli.export import export, reward_app
from constitutional.cli.guard import guard_app
from constitutional.cli.stage_commands import add_pipeline_commands, add_stage_commands

app = typer.Typer(no_args_is_help=True, rich_markup_mode="markdown", help="Constitutional AI on your own models.")
groups = {
    "sl": typer.Typer(no_args_is_help=True, help="SL-CAI: critique -> revision, then SFT on the revisions."),
    "rl": typer.Typer(no_args_is_help=True, help="RL-CAI: sample answer pairs, label them with AI feedback, RL."),
    "pm": typer.Typer(no_args_is_help=True, help="The preference model: train on soft labels, score answers."),
    "eval": typer.Typer(no_args_is_help=True, help="Evaluate: multiple-choice accuracy and calibration, Elo."),
}


@app.callback()
def options(
    debug: Annotated[
        bool, typer.Option("--debug", envvar="CAI_DEBUG", help="Keep tracebacks instead of one-line errors.")
    ] = False,
) -> None:
    """Constitutional AI on your own models."""
    common.DEBUG = debug


add_stage_commands(groups)
groups["sl"].command("export")(tools.sl_export)
groups["eval"].command("mc")(tools.eval_mc)
groups["pm"].command("score")(tools.pm_score)
for name, group in groups.items():
    app.add_typer(group, name=name)
app.add_typer(tools.constitution_app, name="constitution")
app.add_typer(tools.models_app, name="models")
app.add_typer(ccai_app, name="ccai")
app.add_typer(guard_app, name="guard")
app.add_typer(clf_app, name="clf")
app.command("export")(export)
app.add_typer(reward_app, name="reward")
add_pipeline_commands(app)


def main() -> None:
    app(prog_name="cai")
