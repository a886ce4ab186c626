"""The read-only run view: what is not a run is refused with a clear message, and reading creates nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from constitutional.errors import InputError
from constitutional.records import PromptRecord, RejectedRecord
from constitutional.runview import RunView
from constitutional.store import RunStore


class Totals(BaseModel):
    records: int
    label: str


def prompt(i: int) -> PromptRecord:
    return PromptRecord(id=f"p{i}", messages=[{"role": "user", "content": f"question {i}"}], source="test")


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A run written by RunStore: one complete stage with records, a rejection and a JSON output; one running."""
    run = tmp_path / "run"
    with RunStore(run, seed=3) as store:
        store.start("gen", {"config": {"n": 2}})
        records, rejected = store.folder("gen").writers()
        records.write([prompt(0), prompt(1)])
        rejected.write([RejectedRecord(id="bad", reason="empty prompt", source="test")])
        records.close()
        rejected.close()
        (run / "gen" / "totals.json").write_text(Totals(records=2, label="ok").model_dump_json())
        store.finish("gen", {"records": 2}, seconds=0.5)
        store.start("train", {"config": {"steps": 1}})
    return run


# ---- what is not a run ---------------------------------------------------------------------------------------


def test_a_missing_directory_is_refused_and_not_created(tmp_path):
    with pytest.raises(InputError, match="no such run directory") as info:
        RunView(tmp_path / "nowhere" / "run")
    assert str(tmp_path / "nowhere" / "run") in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_a_file_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "manifest.json"  # even a file named like a manifest is not a run directory
    path.write_text("{}")
    with pytest.raises(InputError, match="not a directory") as info:
        RunView(path)
    assert str(path) in str(info.value)
    assert tree(tmp_path) == {"manifest.json": b"{}"}


@pytest.mark.parametrize("contents", [{}, {"notes.txt": b"mine", "sub/data.csv": b"a,b\n"}], ids=["empty", "files"])
def test_a_folder_without_a_manifest_is_refused_and_left_alone(tmp_path, contents):
    folder = tmp_path / "folder"
    folder.mkdir()
    for name, data in contents.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    with pytest.raises(InputError, match=r"not a run directory: it has no manifest\.json") as info:
        RunView(folder)
    assert str(folder) in str(info.value) and "--run-dir" in str(info.value)
    assert tree(folder) == contents
    assert not (folder / ".lock").exists()


def test_a_damaged_manifest_names_the_file(run_dir):
    view = RunView(run_dir)
    (run_dir / "manifest.json").write_text('{"created": 0, "seed": ')
    with pytest.raises(InputError) as info:
        _ = view.manifest
    assert str(run_dir / "manifest.json") in str(info.value)
    # Valid JSON of the wrong shape is named too, with the field that is wrong.
    (run_dir / "manifest.json").write_text('{"created": 0, "seed": "zero", "versions": {}}')
    with pytest.raises(InputError) as info:
        view.status("gen")
    assert str(run_dir / "manifest.json") in str(info.value) and info.value.field == "seed"


# ---- reading a real run --------------------------------------------------------------------------------------


def test_manifest_and_status_of_a_run(run_dir):
    view = RunView(run_dir)
    assert view.manifest.seed == 3
    assert view.status("gen").complete and view.status("gen").summary == {"records": 2}
    assert view.is_complete("gen")
    assert view.status("train").status == "running" and not view.is_complete("train")
    assert view.status("never") is None and not view.is_complete("never")


def test_records_and_rejections_of_a_stage(run_dir):
    view = RunView(run_dir)
    assert view.records("gen", PromptRecord) == [prompt(0), prompt(1)]
    assert [(r.id, r.reason) for r in view.rejected("gen")] == [("bad", "empty prompt")]
    # A stage that wrote nothing has no records; the folder is not made by asking.
    assert view.records("train", PromptRecord) == [] and view.rejected("train") == []
    assert not (run_dir / "train").exists()


def test_read_json(run_dir):
    view = RunView(run_dir)
    assert view.read_json("gen/totals.json", Totals) == Totals(records=2, label="ok")
    assert view.read_json("gen/absent.json", Totals) is None
    (run_dir / "gen" / "totals.json").write_text('{"records": "two", "label": "ok"}')
    with pytest.raises(InputError) as info:
        view.read_json("gen/totals.json", Totals)
    assert str(run_dir / "gen" / "totals.json") in str(info.value) and info.value.field == "records"
    assert view.path("gen/totals.json") == run_dir / "gen" / "totals.json"


def test_reading_creates_nothing_and_needs_no_lock(run_dir):
    before = tree(run_dir)
    with RunStore(run_dir) as store:  # a writer holds the run's lock; a reader does not need it
        view = RunView(run_dir)
        _ = view.manifest, view.status("gen"), view.records("gen", PromptRecord), view.rejected("nothing")
        assert view.read_json("nothing/x.json", Totals) is None
        # Every read goes to the disk: what the writer adds next is seen by the same view.
        writer, _ = store.folder("gen").writers()
        writer.write([prompt(2)])
        writer.close()
        store.finish("train", {"steps": 1}, seconds=0.1)
        assert [r.id for r in view.records("gen", PromptRecord)] == ["p0", "p1", "p2"]
        assert view.is_complete("train")
    after = tree(run_dir)
    added = set(after) - set(before)
    assert len(added) == 1 and next(iter(added)).startswith("gen/part-")  # only the writer's shard
    assert {name for name in before if name != "manifest.json"} <= set(after)
