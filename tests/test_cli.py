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
    from constitutional.cli import common

    monkeypatch.setattr(common.out, "width", 250)
    monkeypatch.setattr(common.console, "width", 250)


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
        ("eval", "mc"),
        ("run",),
        ("demo",),
        ("report",),
    } <= set(COMMANDS)


def test_every_stage_definition_with_a_recipe_section_has_its_command():
    from constitutional.stages import STAGES

    wanted = {tuple(stage.command.split()) for stage in STAGES.values() if stage.section is not None}
    assert wanted and wanted <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_help_has_an_example(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output


@pytest.mark.parametrize("group", [(), ("constitution",), ("sl",), ("rl",), ("pm",), ("eval",), ("models",)])
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


def tree(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_sl_export_of_a_missing_run_exits_2_and_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["sl", "export", "does-not-exist/", "-o", "x.jsonl"])
    assert result.exit_code == 2, result.output
    assert "no such run directory" in result.output and "does-not-exist" in result.output
    assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []  # neither the run directory nor x.jsonl


def _sl_run(run_dir):
    from constitutional.records import RevisionStep, SLRecord
    from constitutional.store import RunStore

    records = [
        SLRecord(
            id="r1",
            kind="red_team",
            prompt=[{"role": "user", "content": "How do I pick a lock?"}],
            initial="Here is how.",
            steps=[RevisionStep(principle=p, critique="c", revision=f"revision {n}") for n, p in enumerate("ab")],
            constitution="harmless@1.0",
            model="m",
            params={},
            seed=0,
        ),
        SLRecord(
            id="h1",
            kind="helpful",
            prompt=[{"role": "user", "content": "What is rain?"}],
            initial="Water falling from clouds.",
            constitution="harmless@1.0",
            model="m",
            params={},
            seed=0,
        ),
    ]
    with RunStore(run_dir) as store:
        store.start("sl_generate", {"made_by": "test"})
        writer, _ = store.folder("sl_generate").writers()
        writer.write(records)
        writer.close()
        store.finish("sl_generate", {"records": 2}, seconds=0.0)
    return records


def test_sl_export_writes_sft_rows_from_the_final_revisions_and_the_records_as_they_are(tmp_path):
    import json

    records = _sl_run(tmp_path / "run")
    before = tree(tmp_path / "run")
    result = runner.invoke(app, ["sl", "export", str(tmp_path / "run"), "-o", str(tmp_path / "sft.jsonl")])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "sft.jsonl").read_text().splitlines()]
    assert {row["id"]: row["messages"][-1] for row in rows} == {
        "r1": {"role": "assistant", "content": "revision 1"},
        "h1": {"role": "assistant", "content": "Water falling from clouds."},
    }
    assert all(row["messages"][:-1] == next(r.prompt for r in records if r.id == row["id"]) for row in rows)
    result = runner.invoke(
        app, ["sl", "export", str(tmp_path / "run"), "--format", "records", "-o", str(tmp_path / "records.jsonl")]
    )
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "records.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["id"] for line in lines) == ["h1", "r1"]
    assert tree(tmp_path / "run") == before  # exporting reads the run, it never writes to it


def test_sl_export_of_a_run_without_records_exits_2_and_writes_nothing(tmp_path):
    from constitutional.store import RunStore

    RunStore(tmp_path / "run").close()
    result = runner.invoke(app, ["sl", "export", str(tmp_path / "run"), "-o", str(tmp_path / "x.jsonl")])
    assert result.exit_code == 2, result.output
    output = squash(result.output)
    assert "noSL-CAIrecords" in output and "caislgenerate" in output
    assert not (tmp_path / "x.jsonl").exists()


def test_report_on_a_folder_that_is_not_a_run_exits_2_and_writes_nothing_there(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(b"\xff\xd8")
    result = runner.invoke(app, ["report", str(folder)])
    assert result.exit_code == 2, result.output
    assert "not a run directory" in result.output and "Traceback" not in result.output
    assert tree(folder) == {"cat.jpg": b"\xff\xd8"}


def test_report_on_a_missing_folder_exits_2_and_creates_nothing(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path / "runs" / "typo")])
    assert result.exit_code == 2, result.output
    assert "no such run directory" in result.output
    assert list(tmp_path.iterdir()) == []


def test_run_into_a_folder_that_is_not_a_run_exits_2_and_writes_nothing_there(tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine\n")
    result = runner.invoke(app, ["sl", "generate", "--run-dir", str(folder), "--max-prompts", "1"])
    assert result.exit_code == 2, result.output
    assert "notarundirectory" in squash(result.output) and "Traceback" not in result.output
    assert tree(folder) == {"notes.txt": b"mine\n"}
