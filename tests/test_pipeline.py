"""The pipeline: stages run in order, complete ones are skipped, partial ones resume, changed ones are redone."""

from __future__ import annotations

import pytest

from constitutional import pipeline
from constitutional.errors import InputError
from constitutional.recipe import Recipe
from constitutional.records import RejectedRecord
from constitutional.store import RunStore


class Recorder:
    """Fake stages that write one record per item, can die part-way, and log every call."""

    def __init__(self):
        self.calls: list[str] = []
        self.die_after: dict[str, int] = {}

    def generate(self, recipe: Recipe, store: RunStore) -> dict:
        self.calls.append("sl_generate")
        stage = store.stage("sl_generate")
        done = stage.done_ids(RejectedRecord)
        writer, _ = stage.writers()
        written, limit = 0, self.die_after.pop("sl_generate", -1)
        for i in range(recipe.sl.num_revisions * 3):
            if f"r{i}" in done:
                continue
            if written == limit:
                writer.close()
                raise KeyboardInterrupt
            writer.write([RejectedRecord(id=f"r{i}", reason="fake", source="test")])
            written += 1
        writer.close()
        return {"records": len(stage.records(RejectedRecord)), "written": written}

    def train(self, recipe: Recipe, store: RunStore) -> dict:
        self.calls.append("sl_train")
        if self.die_after.pop("sl_train", None) is not None:
            raise KeyboardInterrupt
        return {"steps": recipe.sl_train.max_steps}


@pytest.fixture
def stages(monkeypatch):
    recorder = Recorder()
    fake = {
        "sl_generate": pipeline.StageDef(
            "sl_generate", "cai sl generate", lambda r: {"n": r.sl.num_revisions}, recorder.generate
        ),
        "sl_train": pipeline.StageDef(
            "sl_train",
            "cai sl train",
            lambda r: {"steps": r.sl_train.max_steps},
            recorder.train,
            after=("sl_generate",),
            resumable=False,
        ),
    }
    monkeypatch.setattr(pipeline, "STAGES", fake)
    return recorder


def recipe(tmp_path, revisions=1, steps=3) -> Recipe:
    return Recipe.model_validate(
        {"run_dir": str(tmp_path / "run"), "sl": {"num_revisions": revisions}, "sl_train": {"max_steps": steps}}
    )


def actions(outcomes) -> list[tuple[str, str]]:
    return [(o.name, o.action) for o in outcomes]


def test_a_second_run_skips_complete_stages(tmp_path, stages):
    assert actions(pipeline.run(recipe(tmp_path))) == [("sl_generate", "ran"), ("sl_train", "ran")]
    assert actions(pipeline.run(recipe(tmp_path))) == [("sl_generate", "skipped"), ("sl_train", "skipped")]
    assert stages.calls == ["sl_generate", "sl_train"]


def test_a_changed_upstream_config_redoes_the_downstream_stage(tmp_path, stages):
    pipeline.run(recipe(tmp_path))
    outcomes = pipeline.run(recipe(tmp_path, revisions=2))
    assert actions(outcomes) == [("sl_generate", "redone"), ("sl_train", "redone")]
    assert outcomes[0].summary == {"records": 6, "written": 6}  # old records were removed, not mixed in
    log = (tmp_path / "run" / pipeline.LOG_FILE).read_text()
    assert "config changed" in log


def test_only_the_changed_stage_and_its_dependents_rerun(tmp_path, stages):
    pipeline.run(recipe(tmp_path))
    assert actions(pipeline.run(recipe(tmp_path, steps=5))) == [("sl_generate", "skipped"), ("sl_train", "redone")]


def test_an_interrupted_stage_resumes_from_its_records(tmp_path, stages):
    stages.die_after["sl_generate"] = 2
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(recipe(tmp_path, revisions=2))
    outcomes = pipeline.run(recipe(tmp_path, revisions=2))
    assert actions(outcomes)[0] == ("sl_generate", "resumed")
    assert outcomes[0].summary == {"records": 6, "written": 4}
    assert "resuming" in (tmp_path / "run" / pipeline.LOG_FILE).read_text()


def test_an_interrupted_training_stage_restarts(tmp_path, stages):
    stages.die_after["sl_train"] = 0
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(recipe(tmp_path))
    assert actions(pipeline.run(recipe(tmp_path))) == [("sl_generate", "skipped"), ("sl_train", "restarted")]
    assert "restarting" in (tmp_path / "run" / pipeline.LOG_FILE).read_text()


def test_force_redoes_a_complete_stage(tmp_path, stages):
    pipeline.run(recipe(tmp_path))
    outcomes = pipeline.run(recipe(tmp_path), ["sl_generate"], force=["sl_generate"])
    assert actions(outcomes) == [("sl_generate", "ran")]


def test_a_stage_whose_input_is_missing_names_the_command_to_run(tmp_path, stages):
    with pytest.raises(InputError, match="cai sl generate"):
        pipeline.run(recipe(tmp_path), ["sl_train"])


def test_unknown_stage_is_refused(tmp_path, stages):
    with pytest.raises(InputError, match="unknown stage"):
        pipeline.run(recipe(tmp_path), ["sl_generat"])


def test_the_real_registry_follows_the_pipeline_order():
    assert pipeline.ordered_stages() == [name for name in pipeline.ORDER if name in pipeline.STAGES]
    assert {"sl_generate", "sl_train"} <= set(pipeline.STAGES)
