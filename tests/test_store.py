"""The run store: shards round-trip, torn lines are redone, corruption is named, manifests, resets and locks hold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from constitutional.errors import InputError
from constitutional.records import SCHEMA_VERSION, PromptRecord, RejectedRecord
from constitutional.runview import Manifest
from constitutional.store import RunStore, StageFolder, config_hash


def prompt(i: int) -> PromptRecord:
    return PromptRecord(id=f"p{i}", messages=[{"role": "user", "content": f"question {i}"}], source="test")


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes, to show that a refused call changed nothing."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- a stage's folder ----------------------------------------------------------------------------------------


def test_records_round_trip(tmp_path):
    with RunStore(tmp_path / "run") as store:
        stage = store.folder("s")
        records, rejected = stage.writers()
        records.write([prompt(0), prompt(1)])
        records.write([prompt(2)])
        rejected.write([RejectedRecord(id="bad", reason="empty prompt", source="test")])
        records.close()
        rejected.close()
        assert stage.records(PromptRecord) == [prompt(0), prompt(1), prompt(2)]
        assert [r.reason for r in stage.rejected()] == ["empty prompt"]
        assert stage.done_ids(PromptRecord) == {"p0", "p1", "p2", "bad"}
    # A fresh store on the same directory sees the same records; so does the bare folder, which needs no manifest.
    with RunStore(tmp_path / "run") as store:
        assert store.folder("s").records(PromptRecord) == [prompt(0), prompt(1), prompt(2)]
    assert StageFolder(tmp_path / "run" / "s").records(PromptRecord) == [prompt(0), prompt(1), prompt(2)]


def test_reading_a_folder_nothing_wrote_creates_nothing(tmp_path):
    stage = StageFolder(tmp_path / "never")
    assert stage.records(PromptRecord) == [] and stage.rejected() == [] and stage.done_ids(PromptRecord) == set()
    assert not (tmp_path / "never").exists()
    stage.writers()  # asking for writers is what makes the folder
    assert (tmp_path / "never").is_dir()


def test_each_writers_call_opens_fresh_shards(tmp_path):
    stage = StageFolder(tmp_path / "s")
    first, first_rejected = stage.writers()
    first.write([prompt(0)])
    first.close()
    second, second_rejected = stage.writers()
    assert second.path != first.path and second_rejected.path != first_rejected.path
    second.write([prompt(1)])
    second.close()
    assert [r.id for r in stage.records(PromptRecord)] == ["p0", "p1"]


def test_empty_write_creates_no_file(tmp_path):
    records, _ = StageFolder(tmp_path / "s").writers()
    records.write([])
    records.close()
    assert not records.path.exists()


def test_torn_last_line_is_skipped_and_redone(tmp_path):
    stage = StageFolder(tmp_path / "s")
    writer, _ = stage.writers()
    writer.write([prompt(0), prompt(1)])
    writer.close()
    # Simulate a kill mid-write: the last record is cut short with no newline.
    text = writer.path.read_text(encoding="utf-8")
    writer.path.write_text(text[: len(text) - 15], encoding="utf-8")
    assert not writer.path.read_text(encoding="utf-8").endswith("\n")
    assert [r.id for r in stage.records(PromptRecord)] == ["p0"]
    assert stage.done_ids(PromptRecord) == {"p0"}
    # A later process writes a fresh shard with the redone record.
    again, _ = stage.writers()
    again.write([prompt(1)])
    again.close()
    assert [r.id for r in stage.records(PromptRecord)] == ["p0", "p1"]


def test_corrupt_middle_line_names_path_and_line(tmp_path):
    stage = StageFolder(tmp_path / "s")
    writer, _ = stage.writers()
    writer.write([prompt(0)])
    writer.close()
    with writer.path.open("a", encoding="utf-8") as f:
        f.write("{not json\n")
        f.write(prompt(2).model_dump_json() + "\n")
    with pytest.raises(InputError) as info:
        stage.records(PromptRecord)
    assert info.value.line == 2
    assert f"{writer.path}:2" in str(info.value)


def test_corrupt_last_line_with_newline_is_not_silently_skipped(tmp_path):
    # A complete (newline-terminated) line that does not parse is corruption, not a torn write.
    stage = StageFolder(tmp_path / "s")
    writer, _ = stage.writers()
    writer.write([prompt(0)])
    writer.close()
    with writer.path.open("a", encoding="utf-8") as f:
        f.write('{"id": "p1"}\n')
    with pytest.raises(InputError) as info:
        stage.records(PromptRecord)
    assert info.value.line == 2


def test_duplicates_across_shards_read_once(tmp_path):
    stage = StageFolder(tmp_path / "s")
    for batch in ([prompt(0), prompt(1)], [prompt(1), prompt(2)]):
        writer, _ = stage.writers()
        writer.write(batch)
        writer.close()
    assert [r.id for r in stage.records(PromptRecord)] == ["p0", "p1", "p2"]


# ---- the manifest --------------------------------------------------------------------------------------------


def test_typed_manifest_round_trips(tmp_path):
    fingerprint = {"config": {"sl": {"num_revisions": 2}, "seed": 0}, "upstream": {}}
    with RunStore(tmp_path, seed=5) as store:
        assert store.status("s") is None
        store.start("s", fingerprint)
        running = store.status("s")
        assert running.status == "running" and not running.complete and running.finished is None
        assert running.config_hash == config_hash(fingerprint) and running.fingerprint == fingerprint
        store.finish("s", {"records": 3, "rejected": 1, "model_dir": tmp_path / "m"}, seconds=1.234)
    on_disk = json.loads((tmp_path / "manifest.json").read_text(encoding="utf-8"))
    assert on_disk["schema_version"] == SCHEMA_VERSION
    Manifest.model_validate(on_disk)  # what is on disk is the typed manifest, not some other shape
    with RunStore(tmp_path, seed=9) as store:
        manifest = store.manifest
        assert manifest.seed == 5  # the seed of the first run, not the one asked for now
        assert {"constitutional", "python"} <= set(manifest.versions)
        saved = store.status("s")
        assert saved.complete and saved.seconds == 1.2 and saved.finished >= saved.started
        assert saved.config_hash == config_hash(fingerprint) and saved.fingerprint == fingerprint
        # The summary is stored as JSON: a path becomes its text.
        assert saved.summary == {"records": 3, "rejected": 1, "model_dir": str(tmp_path / "m")}


def test_config_hash_ignores_key_order_and_sees_every_value():
    assert config_hash({"a": 1, "b": {"c": 2, "d": 3}}) == config_hash({"b": {"d": 3, "c": 2}, "a": 1})
    assert config_hash({"a": 1, "b": {"c": 2, "d": 3}}) != config_hash({"a": 1, "b": {"c": 2, "d": 4}})


def test_restarting_a_stage_keeps_when_it_first_started(tmp_path):
    with RunStore(tmp_path) as store:
        store.start("s", {"a": 1})
        first = store.status("s").started
        store.start("s", {"a": 2})  # the pipeline decides what a new fingerprint means; the store records it
        assert store.status("s").started == first
        assert store.status("s").config_hash == config_hash({"a": 2})


def test_reset_removes_every_owned_path_and_the_manifest_entry(tmp_path):
    with RunStore(tmp_path) as store:
        store.start("s", {"a": 1})
        writer, rejected = store.folder("s").writers()
        writer.write([prompt(0)])
        rejected.write([RejectedRecord(id="r", reason="x", source="t")])
        writer.close()
        rejected.close()
        (tmp_path / "s_model").mkdir()
        (tmp_path / "s_model" / "model.safetensors").write_bytes(b"weights")
        (tmp_path / "s_summary.json").write_text("{}")
        store.finish("s", {"records": 1}, seconds=0.0)
        # Another stage's outputs are not the reset stage's business.
        store.start("other", {"b": 1})
        other, _ = store.folder("other").writers()
        other.write([prompt(9)])
        other.close()

        store.reset("s", ["s", "s_model", "s_summary.json", "never_written"])
        assert not (tmp_path / "s").exists()
        assert not (tmp_path / "s_model").exists()
        assert not (tmp_path / "s_summary.json").exists()
        assert store.status("s") is None
        assert store.folder("s").records(PromptRecord) == []
        assert store.folder("other").records(PromptRecord) == [prompt(9)] and store.status("other") is not None
    with RunStore(tmp_path) as store:  # the removal of the entry was saved
        assert store.status("s") is None and store.status("other") is not None


# ---- what a run directory may be -----------------------------------------------------------------------------


def test_refuses_a_path_that_is_a_file_and_writes_nothing(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("my notes\n")
    before = tree(tmp_path)
    with pytest.raises(InputError, match="not a directory") as info:
        RunStore(path)
    assert str(path) in str(info.value)
    assert tree(tmp_path) == before


def test_refuses_a_folder_with_files_but_no_manifest_and_writes_nothing(tmp_path):
    folder = tmp_path / "project"
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "main.py").write_text("print('hi')\n")
    before = tree(folder)
    with pytest.raises(InputError, match="not a run directory") as info:
        RunStore(folder)
    assert str(folder) in str(info.value)
    assert tree(folder) == before
    assert sorted(p.name for p in folder.iterdir()) == ["src"]  # no manifest, no lock file


def test_accepts_a_new_or_an_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "empty", tmp_path / "new" / "nested"):
        RunStore(folder).close()
        assert (folder / "manifest.json").is_file()


def test_a_damaged_manifest_names_the_file(tmp_path):
    with RunStore(tmp_path):
        pass
    (tmp_path / "manifest.json").write_text('{"seed": 0, "stages": ')
    with pytest.raises(InputError) as info:
        RunStore(tmp_path)
    assert str(tmp_path / "manifest.json") in str(info.value)


def test_second_store_on_same_dir_is_locked_out(tmp_path):
    first = RunStore(tmp_path)
    try:
        with pytest.raises(InputError, match="another process"):
            RunStore(tmp_path)
    finally:
        first.close()
    # Released on close: the directory can be opened again.
    RunStore(tmp_path).close()
