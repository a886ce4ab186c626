"""`cai export`: a run's prompts, SFT rows and preferences in TRL's format (checked with TRL's own data utilities and
`datasets`), the split, the manifest, and what the command refuses. verl and OpenRLHF: test_export_frameworks.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from constitutional.cli import app
from constitutional.errors import InputError
from constitutional.export.source import read_run, split_of
from constitutional.export.writer import EXPORT_MANIFEST, export_run
from constitutional.records import ComparisonRecord, PairRecord, RevisionStep, SLRecord
from constitutional.store import RunStore

runner = CliRunner()
RED_TEAM = [f"r{i}" for i in range(6)]
HELPFUL = [f"h{i}" for i in range(4)]
LABELLED = {"r0": 0.9, "r1": 0.2, "r2": 0.55, "x1": 0.7}  # x1: a sampled prompt SL-CAI never saw
PROVENANCE = {"constitution": "harmless@1.0", "params": {}, "seed": 0}


def ask(record_id: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Question {record_id}?"}]


def sl_records() -> list[SLRecord]:
    red = [
        SLRecord(
            id=i,
            kind="red_team",
            prompt=ask(i),
            initial=f"bad answer {i}",
            steps=[
                RevisionStep(principle="p1", critique="c", revision=f"first {i}"),
                RevisionStep(principle="p2", critique=None, revision=f"final {i}"),
            ],
            model="policy",
            **PROVENANCE,
        )
        for i in RED_TEAM
    ]
    helpful = [
        SLRecord(id=i, kind="helpful", prompt=ask(i), initial=f"help {i}", model="policy", **PROVENANCE)
        for i in HELPFUL
    ]
    return red + helpful


def pair_records() -> list[PairRecord]:
    return [
        PairRecord(id=i, kind="red_team", prompt=ask(i), a=f"a {i}", b=f"b {i}", model="policy", **PROVENANCE)
        for i in [*RED_TEAM, "x1"]
    ]


def comparison_records() -> list[ComparisonRecord]:
    return [
        ComparisonRecord(
            id=i,
            kind="red_team",
            prompt=ask(i),
            a=f"a {i}",
            b=f"b {i}",
            principles=["harm-1"],
            p_a=p,
            p_a_first=p,
            logprobs=[[-0.1, -2.0]],
            constitution="harmless@1.0",
            model="feedback",
            seed=0,
        )
        for i, p in LABELLED.items()
    ]


def _stage(store: RunStore, name: str, records) -> None:
    store.start(name, {"made_by": "test", "stage": name})
    writer, rejected = store.folder(name).writers()
    writer.write(records)
    writer.close()
    rejected.close()
    store.finish(name, {"records": len(records)}, seconds=0.0)


def build_run(run_dir: Path, preference_model: Path | None = None) -> Path:
    """A run with SL-CAI records, sampled pairs and their labels; with a preference model folder, pm_train too."""
    with RunStore(run_dir, seed=3) as store:
        _stage(store, "sl_generate", sl_records())
        _stage(store, "rl_sample", pair_records())
        _stage(store, "rl_label", comparison_records())
        if preference_model is not None:
            store.start("pm_train", {"made_by": "test"})
            preference_model.rename(run_dir / "preference_model")
            store.finish("pm_train", {}, seconds=0.0)
    return run_dir


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """The CLI's Rich consoles exist from import time at 80 columns; widen them so table cells do not fold."""
    from constitutional.cli import common

    monkeypatch.setattr(common.out, "width", 250)
    monkeypatch.setattr(common.console, "width", 250)


@pytest.fixture
def run(tmp_path) -> Path:
    return build_run(tmp_path / "run")


# ---- the rows ----------------------------------------------------------------------------------------------------


def test_rows_of_a_run(run):
    rows = read_run(run)
    assert [p.id for p in rows.prompts] == [*RED_TEAM, *HELPFUL, "x1"]  # SL-CAI prompts, then sampled-only ones
    references = {p.id: p.reference for p in rows.prompts}
    assert references["r3"] == "final r3" and references["h1"] == "help h1"
    assert references["x1"] == "a x1"  # its labelled pair preferred a (p_a = 0.7)
    by_id = {r["id"]: r for r in rows.preferences}
    assert (by_id["r1"]["chosen"], by_id["r1"]["rejected"]) == (
        [{"role": "assistant", "content": "b r1"}],
        [{"role": "assistant", "content": "a r1"}],
    )
    assert by_id["r1"]["p_chosen"] == pytest.approx(0.8) and by_id["r0"]["p_chosen"] == pytest.approx(0.9)
    assert by_id["r2"]["principles"] == ["harm-1"] and by_id["r2"]["feedback_model"] == "feedback"


def test_sft_rows_are_the_ones_cai_sl_export_writes(run, tmp_path):
    result = runner.invoke(app, ["sl", "export", str(run), "-o", str(tmp_path / "sl.jsonl")])
    assert result.exit_code == 0, result.output
    assert read_run(run).sft == read_jsonl(tmp_path / "sl.jsonl")
    assert {r["id"]: r["messages"][-1]["content"] for r in read_run(run).sft}["r2"] == "final r2"


def test_split_is_decided_by_the_id_alone():
    ids = [f"id-{n}" for n in range(2000)]
    held_out = [i for i in ids if split_of(i, 0.1, seed=3) == "test"]
    assert 150 < len(held_out) < 250
    assert held_out == [i for i in ids if split_of(i, 0.1, seed=3) == "test"]  # stable
    assert held_out != [i for i in ids if split_of(i, 0.1, seed=4) == "test"]  # seeded
    assert all(split_of(i, 0.0, seed=3) == "train" for i in ids)


# ---- TRL -----------------------------------------------------------------------------------------------------------


def test_trl_export_reads_with_trl_and_datasets(run, tmp_path, tiny_model_path):
    from datasets import load_dataset
    from transformers import AutoTokenizer
    from trl.data_utils import is_conversational, maybe_apply_chat_template

    out = tmp_path / "trl"
    manifest = export_run(run, "trl", out, test_share=0.3)
    splits = {name: load_dataset(str(out / name)) for name in ("sft", "preference", "prompts")}
    for name, found in splits.items():
        assert set(found) == {"train", "test"}, name  # datasets reads the split from the file names
        assert sum(len(part) for part in found.values()) == manifest.counts[name]
        for split, part in found.items():
            assert all(split_of(record_id, 0.3, seed=3) == split for record_id in part["id"])
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    sft = splits["sft"]["train"][0]
    assert is_conversational(sft) and set(sft) >= {"messages", "id", "kind"}
    text = maybe_apply_chat_template(sft, tokenizer)["text"]
    assert sft["messages"][0]["content"] in text and sft["messages"][-1]["content"] in text
    preference = splits["preference"]["train"][0]
    assert is_conversational(preference) and 0.5 <= preference["p_chosen"] <= 1.0
    rendered = maybe_apply_chat_template(preference, tokenizer)
    assert set(rendered) >= {"prompt", "chosen", "rejected"} and rendered["chosen"].startswith(
        preference["chosen"][0]["content"]
    )
    prompt = splits["prompts"]["train"][0]
    assert is_conversational(prompt) and set(prompt) >= {"prompt", "id", "kind", "reference"}
    assert maybe_apply_chat_template(prompt, tokenizer)["prompt"].endswith("<|assistant|>")
    assert manifest.counts == {"prompts": 11, "sft": 10, "preference": 4}
    assert manifest.not_written == {} and manifest.reward is None


def test_manifest_names_the_run_and_the_config_hashes_it_read(run, tmp_path):
    from constitutional.runview import RunView

    export_run(run, "trl", tmp_path / "trl", test_share=0.0)
    manifest = json.loads((tmp_path / "trl" / EXPORT_MANIFEST).read_text())
    stages = RunView(run).manifest.stages
    assert manifest["source"] == str(run.resolve()) and manifest["seed"] == 3 and manifest["format"] == "trl"
    assert manifest["stages"] == {
        name: {"status": "complete", "config_hash": stages[name].config_hash}
        for name in ("sl_generate", "rl_sample", "rl_label")
    }
    assert manifest["files"] == {"prompts/train.jsonl": 11, "sft/train.jsonl": 10, "preference/train.jsonl": 4}
    assert manifest["prompts_without_reference"] == 0
    assert f'load_dataset("{(tmp_path / "trl").resolve()}/prompts")' in (tmp_path / "trl" / "README.md").read_text()


def test_a_run_without_labels_exports_prompts_and_sft_and_says_what_is_missing(tmp_path):
    with RunStore(tmp_path / "run", seed=0) as store:
        _stage(store, "sl_generate", sl_records())
        _stage(store, "rl_sample", pair_records())
    manifest = export_run(tmp_path / "run", "trl", tmp_path / "out", test_share=0.0)
    assert manifest.counts == {"prompts": 11, "sft": 10, "preference": 0}
    assert "cai rl label" in manifest.not_written["preference"]
    assert not (tmp_path / "out" / "preference").exists()
    assert manifest.prompts_without_reference == 1  # x1: sampled, never labelled, not an SL-CAI prompt


# ---- the command -------------------------------------------------------------------------------------------------


def test_cli_export_writes_and_leaves_the_run_alone(run, tmp_path):
    before = tree(run)
    result = runner.invoke(app, ["export", str(run), "--format", "trl", "--to", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "prompts/train.jsonl" in "".join(result.output.split())
    assert (tmp_path / "out" / EXPORT_MANIFEST).is_file()
    assert tree(run) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_an_earlier_export_is_replaced_only_with_force(run, tmp_path):
    out = tmp_path / "out"
    assert runner.invoke(app, ["export", str(run), "-f", "trl", "--to", str(out)]).exit_code == 0
    (out / "stale.txt").write_text("from before")
    result = runner.invoke(app, ["export", str(run), "-f", "openrlhf", "--to", str(out)])
    assert result.exit_code == 2 and "--force" in result.output
    assert json.loads((out / EXPORT_MANIFEST).read_text())["format"] == "trl"
    result = runner.invoke(app, ["export", str(run), "-f", "openrlhf", "--to", str(out), "--force"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / EXPORT_MANIFEST).read_text())["format"] == "openrlhf"
    assert not (out / "stale.txt").exists()


@pytest.mark.parametrize(
    ("where", "message"),
    [("foreign", "notanearlierexport"), ("inside", "insidetherundirectory"), ("missing-run", "nosuchrundirectory")],
)
def test_refused_targets_exit_2_and_write_nothing(run, tmp_path, where, message):
    source, target = run, tmp_path / "out"
    if where == "foreign":
        target.mkdir()
        (target / "notes.txt").write_text("mine")
    elif where == "inside":
        target = run / "export"
    else:
        source = tmp_path / "typo"
    before = tree(tmp_path)
    result = runner.invoke(app, ["export", str(source), "-f", "verl", "--to", str(target)])
    assert result.exit_code == 2, result.output
    assert message in "".join(result.output.split()) and "Traceback" not in result.output
    assert tree(tmp_path) == before


def test_reward_pm_without_a_preference_model_says_what_to_run(run, tmp_path):
    result = runner.invoke(app, ["export", str(run), "-f", "trl", "--to", str(tmp_path / "o"), "--reward", "pm"])
    assert result.exit_code == 2 and "caipmtrain" in "".join(result.output.split())
    assert not (tmp_path / "o").exists()


def test_reward_serve_refuses_a_missing_reward_before_listening(tmp_path):
    result = runner.invoke(app, ["reward", "serve", str(tmp_path / "nope.json"), "--port", "1"])
    assert result.exit_code == 2 and "nosuchrewardfile" in "".join(result.output.split())


def test_a_run_with_nothing_to_export_is_refused(tmp_path):
    RunStore(tmp_path / "run").close()
    with pytest.raises(InputError, match="no prompts to export"):
        export_run(tmp_path / "run", "trl", tmp_path / "out")
    assert not (tmp_path / "out").exists()
