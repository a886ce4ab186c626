"""The run store: shards round-trip, torn lines are redone, corruption is named, manifests and locks hold."""

from __future__ import annotations

import json

import pytest

from constitutional.errors import InputError
from constitutional.records import SCHEMA_VERSION, PromptRecord, RejectedRecord
from constitutional.store import RunStore, config_hash, to_dataset


def prompt(i: int) -> PromptRecord:
    return PromptRecord(id=f"p{i}", messages=[{"role": "user", "content": f"question {i}"}], source="test")


def test_records_round_trip(tmp_path):
    with RunStore(tmp_path / "run") as store:
        stage = store.stage("s")
        records, rejected = stage.writers()
        records.write([prompt(0), prompt(1)])
        records.write([prompt(2)])
        rejected.write([RejectedRecord(id="bad", reason="empty prompt", source="test")])
        records.close()
        rejected.close()
        assert stage.records(PromptRecord) == [prompt(0), prompt(1), prompt(2)]
        assert [r.reason for r in stage.rejected()] == ["empty prompt"]
        assert stage.done_ids(PromptRecord) == {"p0", "p1", "p2", "bad"}
    # A fresh store on the same directory sees the same records.
    with RunStore(tmp_path / "run") as store:
        assert store.stage("s").records(PromptRecord) == [prompt(0), prompt(1), prompt(2)]


def test_each_writers_call_opens_fresh_shards(tmp_path):
    with RunStore(tmp_path) as store:
        stage = store.stage("s")
        first, _ = stage.writers()
        first.write([prompt(0)])
        first.close()
        second, _ = stage.writers()
        assert second.path != first.path
        second.write([prompt(1)])
        second.close()
        assert [r.id for r in stage.records(PromptRecord)] == ["p0", "p1"]


def test_empty_write_creates_no_file(tmp_path):
    with RunStore(tmp_path) as store:
        records, _ = store.stage("s").writers()
        records.write([])
        records.close()
        assert not records.path.exists()


def test_torn_last_line_is_skipped_and_redone(tmp_path):
    with RunStore(tmp_path) as store:
        stage = store.stage("s")
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
    with RunStore(tmp_path) as store:
        stage = store.stage("s")
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
    with RunStore(tmp_path) as store:
        stage = store.stage("s")
        writer, _ = stage.writers()
        writer.write([prompt(0)])
        writer.close()
        with writer.path.open("a", encoding="utf-8") as f:
            f.write('{"id": "p1"}\n')
        with pytest.raises(InputError) as info:
            stage.records(PromptRecord)
        assert info.value.line == 2


def test_duplicates_across_shards_read_once(tmp_path):
    with RunStore(tmp_path) as store:
        stage = store.stage("s")
        for batch in ([prompt(0), prompt(1)], [prompt(1), prompt(2)]):
            writer, _ = stage.writers()
            writer.write(batch)
            writer.close()
        assert [r.id for r in stage.records(PromptRecord)] == ["p0", "p1", "p2"]


def test_manifest_round_trip_and_completion(tmp_path):
    config = {"sl": {"num_revisions": 2}, "seed": 0}
    with RunStore(tmp_path, seed=5) as store:
        stage = store.stage("s")
        assert stage.status == {}
        assert not stage.is_complete(config)
        stage.start(config)
        assert stage.status["status"] == "running"
        assert not stage.is_complete(config)
        stage.finish(records=3, rejected=1)
    manifest = json.loads((tmp_path / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["schema_version"] == SCHEMA_VERSION
    assert manifest["seed"] == 5
    assert "constitutional" in manifest["versions"]
    saved = manifest["stages"]["s"]
    assert saved["status"] == "complete"
    assert saved["config_hash"] == config_hash(config)
    assert saved["config"] == config
    assert saved["summary"] == {"records": 3, "rejected": 1}
    with RunStore(tmp_path) as store:
        stage = store.stage("s")
        assert store.manifest()["seed"] == 5  # the seed of the first run, not the default
        assert stage.is_complete(config)
        # Key order does not matter; a changed value does.
        assert stage.is_complete({"seed": 0, "sl": {"num_revisions": 2}})
        assert not stage.is_complete({"sl": {"num_revisions": 3}, "seed": 0})


def test_start_with_different_config_raises(tmp_path):
    with RunStore(tmp_path) as store:
        stage = store.stage("s")
        stage.start({"a": 1})
        stage.start({"a": 1})  # resuming with the same config is fine
        with pytest.raises(InputError, match="different config"):
            stage.start({"a": 2})
        stage.reset()
        stage.start({"a": 2})
        assert stage.status["config_hash"] == config_hash({"a": 2})


def test_reset_removes_shards_and_status(tmp_path):
    with RunStore(tmp_path) as store:
        stage = store.stage("s")
        stage.start({"a": 1})
        writer, rejected = stage.writers()
        writer.write([prompt(0)])
        rejected.write([RejectedRecord(id="r", reason="x", source="t")])
        writer.close()
        rejected.close()
        stage.reset()
        assert stage.records(PromptRecord) == []
        assert stage.rejected() == []
        assert stage.status == {}


def test_second_store_on_same_dir_is_locked_out(tmp_path):
    first = RunStore(tmp_path)
    try:
        with pytest.raises(InputError, match="another process"):
            RunStore(tmp_path)
    finally:
        first.close()
    # Released on close: the directory can be opened again.
    RunStore(tmp_path).close()


def test_to_dataset(tmp_path):
    from datasets import Dataset

    rows = [
        {"prompt": "a", "chosen": "b", "rejected": "c", "p_chosen": 0.75},
        {"prompt": "d", "chosen": "e", "rejected": "f", "p_chosen": 0.5},
    ]
    dataset = to_dataset(rows)
    assert isinstance(dataset, Dataset)
    assert len(dataset) == 2
    assert dataset.column_names == ["prompt", "chosen", "rejected", "p_chosen"]
    assert dataset.to_list() == rows
