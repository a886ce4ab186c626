"""CLI smoke tests: every command has help with an example; bad input ends with exit 2 and a pointed message."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from constitutional.cli import app

runner = CliRunner()


def leaf_commands(command, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    # Typer vendors its own click, so groups are recognised by their sub-commands rather than by class.
    if getattr(command, "commands", None):
        return [leaf for name, sub in command.commands.items() for leaf in leaf_commands(sub, (*path, name))]
    return [path]


COMMANDS = leaf_commands(typer.main.get_command(app))


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """The CLI's Rich consoles exist from import time at 80 columns; widen them so table cells do not fold."""
    from constitutional import cli

    monkeypatch.setattr(cli.out, "width", 250)
    monkeypatch.setattr(cli.console, "width", 250)


def squash(text: str) -> str:
    """Output with all whitespace removed, so Rich's wrapping at the terminal width cannot split what we look for."""
    return "".join(text.split())


def test_expected_commands_exist():
    assert {
        ("constitution", "list"),
        ("constitution", "show"),
        ("constitution", "validate"),
        ("sl", "generate"),
        ("sl", "train"),
        ("sl", "export"),
        ("models", "list"),
        ("rl", "train"),
        ("rl", "sample"),
        ("pm", "train"),
        ("pm", "score"),
        ("eval", "compare"),
    } <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_help_has_an_example(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output


@pytest.mark.parametrize("group", [(), ("constitution",), ("sl",), ("models",)])
def test_group_help(group):
    result = runner.invoke(app, [*group, "--help"])
    assert result.exit_code == 0, result.output


def test_constitution_list_shows_both_builtins():
    result = runner.invoke(app, ["constitution", "list"])
    assert result.exit_code == 0, result.output
    assert "harmless" in result.output
    assert "good-for-humanity" in squash(result.output)


def test_constitution_show_lists_ids():
    result = runner.invoke(app, ["constitution", "show", "harmless"])
    assert result.exit_code == 0, result.output
    assert "harmless@" in result.output
    output = squash(result.output)
    assert "general-harm" in output
    assert "non-evasive" in output


def test_constitution_show_unknown_name_exits_2():
    result = runner.invoke(app, ["constitution", "show", "no-such-one"])
    assert result.exit_code == 2
    assert "unknown constitution" in result.output
    assert "Traceback" not in result.output


def test_constitution_validate_ok():
    from constitutional.constitution import _BUILTIN_DIR

    result = runner.invoke(app, ["constitution", "validate", str(_BUILTIN_DIR / "harmless.yaml")])
    assert result.exit_code == 0, result.output
    assert "ok: harmless@" in result.output


def test_constitution_validate_bad_file_names_path_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        'name: bad\nversion: "1"\ndescription: x\ncritique_revision:\n'
        '  - id: one\n    critique: "Point out the harm here."\n'
        "comparison:\n  - id: two\n    comparison: Which is less harmful?\n",
        encoding="utf-8",
    )
    result = runner.invoke(app, ["constitution", "validate", str(path)])
    assert result.exit_code == 2
    output = squash(result.output)
    assert f"{path}:5" in output
    assert "critique_revision.0.revision" in output
    assert "Traceback" not in result.output


def test_sl_generate_help_lists_stage_fields():
    result = runner.invoke(app, ["sl", "generate", "--help"])
    assert result.exit_code == 0
    output = squash(result.output)
    assert "--num-revisions" in output
    assert "--config" in output
    assert "--force" in output


def test_sl_generate_unknown_flag_exits_2_with_clear_message(tmp_path):
    result = runner.invoke(app, ["sl", "generate", "--num-revisons", "3", "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "unknown option '--num-revisons'" in result.output
    assert "--help" in result.output
    assert "Traceback" not in result.output
    # Refused before anything was written.
    assert not (tmp_path / "run").exists()


def test_sl_generate_bad_recipe_exits_2(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("sl:\n  num_revisions: 0\n", encoding="utf-8")
    result = runner.invoke(app, ["sl", "generate", "--config", str(path)])
    assert result.exit_code == 2
    output = squash(result.output)
    assert f"{path}:2" in output
    assert "sl.num_revisions" in output
