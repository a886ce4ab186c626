"""The generation stages on a Ray cluster (engine: ray): a head and a worker node started here on loopback addresses,
each a model replica's home. The same ids complete as in one process; a worker that dies mid-chunk is restarted and
its chunk done once; a driver killed mid-stage is resumed from the chunks on disk. Tiny models built in the test,
except the slow test on the embedded policy.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from constitutional import pipeline
from constitutional.engine import EngineConfig, LocalEngine, open_engine
from constitutional.engine.ray_workers import placements
from constitutional.errors import InputError
from constitutional.recipe import load_recipe
from constitutional.records import SLRecord
from constitutional.runview import RunView
from constitutional.stages import CLASSIFIER_STAGES, STAGES
from constitutional.store import StageFolder

PROMPTS = 8
WAIT = 300.0  # seconds a run may take to reach a kill point on a busy two-core machine


# ---- without a cluster --------------------------------------------------------------------------------------------


def test_the_local_engine_is_the_default_and_is_the_model_itself():
    config = load_recipe(None).engine
    assert config.kind == "local"
    model = object()
    with open_engine(config, None, model, load=None) as engine:
        assert isinstance(engine, LocalEngine) and engine.model is model


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ({"kind": "spark"}, "engine.kind"),
        ({"kind": "ray", "workers": 0}, "engine.workers"),
        ({"kind": "ray", "cpus_per_worker": 0}, "engine.cpus_per_worker"),
        ({"kind": "ray", "nodes": 2}, "engine.nodes"),
    ],
)
def test_a_bad_engine_section_is_refused_naming_its_field_and_line(tmp_path, section, field):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"seed": 1, "engine": section}), encoding="utf-8")
    with pytest.raises(InputError) as caught:
        load_recipe(path)
    assert caught.value.field == field
    assert caught.value.path == path and caught.value.line is not None


def _node(number: int, cpus: float, gpus: float = 0) -> dict:
    return {
        "Alive": True,
        "NodeID": f"n{number}",
        "NodeManagerAddress": f"10.0.0.{number}",
        "Resources": {"CPU": cpus, "GPU": gpus},
    }


def test_workers_spread_over_the_nodes_first_within_what_each_node_has_room_for():
    nodes = [_node(2, cpus=8), _node(1, cpus=8), {**_node(3, cpus=8), "Alive": False}]
    assert placements(nodes, EngineConfig(replicas_per_node=2)) == ["n1", "n2", "n1", "n2"]
    assert placements(nodes, EngineConfig(replicas_per_node=2, workers=3)) == ["n1", "n2", "n1"]
    # CPUs bound a node's replicas as well: 3 CPUs hold one replica of 2, 8 CPUs four.
    wide = EngineConfig(replicas_per_node=4, cpus_per_worker=2)
    assert placements([_node(1, cpus=3), _node(2, cpus=8)], wide) == ["n1", "n2", "n2", "n2", "n2"]
    gpu_nodes = [_node(1, cpus=32, gpus=8), _node(2, cpus=32, gpus=0)]
    assert placements(gpu_nodes, EngineConfig(replicas_per_node=8, gpus_per_worker=4)) == ["n1", "n1"]


def test_more_workers_than_the_cluster_has_room_for_is_refused_before_any_starts():
    with pytest.raises(InputError) as caught:
        placements([_node(1, cpus=2)], EngineConfig(workers=3, replicas_per_node=4))
    assert caught.value.field == "engine.workers" and "room for 2" in str(caught.value)
    with pytest.raises(InputError) as caught:
        placements([_node(1, cpus=1)], EngineConfig(cpus_per_worker=2))
    assert caught.value.field == "engine.cpus_per_worker"


def test_a_chunk_written_again_replaces_its_own_files(tmp_path):
    folder = StageFolder(tmp_path / "stage")
    first = [
        SLRecord(id=f"p{i}", kind="helpful", prompt=[], initial="one", constitution="c", model="m", params={}, seed=0)
        for i in (1, 2)
    ]
    again = [record.model_copy(update={"initial": "two"}) for record in first]
    other = [first[0].model_copy(update={"id": "p3"})]
    folder.write_chunk(first, [])
    folder.write_chunk(again, [])  # the worker died after writing it; Ray ran the chunk again
    folder.write_chunk(other, [])
    assert sorted((r.id, r.initial) for r in folder.records(SLRecord)) == [("p1", "two"), ("p2", "two"), ("p3", "one")]
    assert sorted(_ids_on_disk(folder.dir)) == ["p1", "p2", "p3"]
    assert not list(folder.dir.glob(".*"))  # no temporary file is left behind


# ---- on a local cluster ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    from constitutional.engine.testing import local_cluster

    with local_cluster(nodes=2, cpus_per_node=1) as running:
        yield running


def _ids_on_disk(folder: Path) -> list[str]:
    """Every id in every shard, counted as often as it is written (readers would hide a duplicate)."""
    ids = []
    for path in [*folder.glob("part-*.jsonl"), *folder.glob("rejected-*.jsonl")]:
        ids += [json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines() if line]
    return ids


def _recipe(tmp_path: Path, policy: str, run: str, engine: dict | None = None, **sl) -> Path:
    prompts = tmp_path / "red.txt"
    prompts.write_text("".join(f"please help me with task number {i}\n" for i in range(PROMPTS)), encoding="utf-8")
    recipe = {
        "run_dir": str(tmp_path / run),
        "models": {"policy": {"name": policy, "dtype": "float32", "device": "cpu", "batch_size": 4}},
        "sl": {
            "red_team_prompts": str(prompts),
            "helpful_prompts": None,
            "num_revisions": 1,
            "num_demonstrations": 0,
            "chunk_size": 2,
            "sampling": {"max_new_tokens": 6, "stop": []},
            **sl,
        },
        "engine": engine or {"kind": "local"},
    }
    path = tmp_path / f"{run}.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def _expected(tmp_path: Path) -> set[str]:
    from constitutional.sources import load_prompts

    return {p.id for p in load_prompts(str(tmp_path / "red.txt"))[0]}


def test_sl_generate_on_two_workers_completes_the_same_ids_as_one_process(cluster, tmp_path, tiny_model_path):
    engine = {"kind": "ray", "address": cluster.address, "workers": 2}
    pipeline.run(load_recipe(_recipe(tmp_path, str(tiny_model_path), "local")), ["sl_generate"])
    pipeline.run(load_recipe(_recipe(tmp_path, str(tiny_model_path), "ray", engine)), ["sl_generate"])

    local, spread = RunView(tmp_path / "local"), RunView(tmp_path / "ray")
    assert spread.is_complete("sl_generate")
    assert {r.id for r in spread.records("sl_generate", SLRecord)} == _expected(tmp_path)
    assert {r.id for r in spread.records("sl_generate", SLRecord)} == {
        r.id for r in local.records("sl_generate", SLRecord)
    }
    # Every chunk is a shard a worker wrote whole; the driver wrote none of the records itself.
    folder = tmp_path / "ray" / "sl_generate"
    assert len(list(folder.glob("part-chunk-*.jsonl"))) == PROMPTS // 2
    assert sorted(_ids_on_disk(folder)) == sorted(_expected(tmp_path))
    assert not list(folder.glob("part-0*.jsonl"))


OTHER_STAGES = {  # stage -> (the stages run, their registry, the folders whose ids are compared)
    "rl_sample+rl_label": (["rl_sample", "rl_label"], STAGES, ["rl_sample", "rl_label"]),
    "evaluate": (["evaluate"], STAGES, ["evaluate"]),
    "clf_generate": (["clf_generate"], CLASSIFIER_STAGES, ["clf_generate", "clf_generate/judgements"]),
}


def _every_stage(tmp_path: Path, chat: Path, base: Path, run: str, engine: dict | None = None) -> Path:
    path = _recipe(tmp_path, str(chat), run, engine)
    recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    short = {"max_new_tokens": 6, "stop": []}
    model = {"dtype": "float32", "device": "cpu", "batch_size": 4}
    prompts, helpful = str(tmp_path / "red.txt"), tmp_path / "helpful.txt"
    helpful.write_text("".join(f"how do I bake loaf {i}?\n" for i in range(3)), encoding="utf-8")
    recipe["models"].update({role: {"name": str(base), **model} for role in ("feedback", "judge")})
    recipe["models"]["generator"] = {"name": str(chat), **model}
    recipe["sample"] = {"policy": "policy", "red_team_prompts": prompts, "helpful_prompts": None, "chunk_size": 2}
    recipe["sample"]["sampling"] = short
    recipe["label"] = {"chunk_size": 2, "num_demonstrations": 0, "num_principles": 2}
    recipe["evaluate"] = {
        "red_team_prompts": prompts,
        "helpful_prompts": str(helpful),
        "temperatures": [1.0, 0.0],
        "chunk_size": 2,
        "sampling": short,
        "judge_items": None,
        "revision_records": 0,
        "bootstrap": 10,
    }
    data = {"rounds": 1, "answers_per_category": 1, "max_general": 2, "chunk_size": 9, "request_tokens": 8}
    data |= {"paraphrase_share": 0.0, "judge_share": 0.2}
    recipe["classifiers"] = {"data": {**data, "sampling": short}}
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


@pytest.mark.parametrize("stage", list(OTHER_STAGES))
def test_the_other_generation_stages_complete_the_same_ids_on_the_cluster(
    stage, cluster, tmp_path, tiny_model_path, tiny_base_model_path
):
    names, registry, folders = OTHER_STAGES[stage]
    engine = {"kind": "ray", "address": cluster.address, "workers": 1}  # two workers: the sl_generate tests
    for run, chosen in (("local", None), ("ray", engine)):
        recipe = load_recipe(_every_stage(tmp_path, tiny_model_path, tiny_base_model_path, run, chosen))
        pipeline.run(recipe, names, registry=registry)

    for folder in folders:
        local, spread = _ids_on_disk(tmp_path / "local" / folder), _ids_on_disk(tmp_path / "ray" / folder)
        assert spread and sorted(spread) == sorted(local), folder
        if stage != "evaluate":  # the judge's records of the evaluation are written here, by the driver
            assert list((tmp_path / "ray" / folder).glob("part-chunk-*.jsonl")), folder
    assert all(RunView(tmp_path / "ray").is_complete(name) for name in names)


def test_a_worker_that_dies_mid_chunk_is_restarted_and_its_chunk_done_once(cluster, tmp_path, tiny_model_path):
    import doubles
    from ray import cloudpickle

    from constitutional import sl
    from constitutional.constitution import load_constitution
    from constitutional.engine.ray_workers import RayEngine
    from constitutional.models import load_model

    cloudpickle.register_pickle_by_value(doubles)  # the workers cannot import the tests folder
    recipe = load_recipe(_recipe(tmp_path, str(tiny_model_path), "run"))
    marker = tmp_path / "died"
    config = EngineConfig(kind="ray", address=cluster.address, workers=2)
    # A chunk is three calls (answer, critique, revision): the fifth is mid-way through a worker's second chunk, and
    # one of the two workers does at least two of the four chunks.
    engine = RayEngine(config, recipe.models.policy, doubles.ExitsOnceLoader(str(marker), on_call=5))
    folder = StageFolder(tmp_path / "run" / "sl_generate")
    try:
        policy = load_model(recipe.models.policy)
        sl.generate(folder, policy, load_constitution(recipe.constitution), recipe.sl, recipe.seed, engine)
    finally:
        engine.close()

    assert marker.exists(), "no worker died: the test proved nothing"
    assert sorted(_ids_on_disk(folder.dir)) == sorted(_expected(tmp_path))


def test_a_driver_killed_mid_stage_is_resumed_with_every_id_once(cluster, tmp_path, tiny_model_path):
    engine = {"kind": "ray", "address": cluster.address, "workers": 2}
    recipe = _recipe(tmp_path, str(tiny_model_path), "run", engine, chunk_size=1)
    folder = tmp_path / "run" / "sl_generate"
    command = [sys.executable, "-m", "constitutional.cli", "sl", "generate", "--config", str(recipe)]
    env = {**os.environ, **cluster.env, "OMP_NUM_THREADS": "1"}
    log = tmp_path / "driver.log"
    with log.open("w") as output:
        driver = subprocess.Popen(command, env=env, stdout=output, stderr=output)
    deadline = time.monotonic() + WAIT
    while not list(folder.glob("part-chunk-*.jsonl")) and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert driver.poll() is None, f"the stage ended before the kill:\n{log.read_text()[-3000:]}"
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    written = len(_ids_on_disk(folder))
    assert 1 <= written < PROMPTS
    assert RunView(tmp_path / "run").status("sl_generate").status == "running"

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=WAIT)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert RunView(tmp_path / "run").is_complete("sl_generate")
    assert sorted(_ids_on_disk(folder)) == sorted(_expected(tmp_path))


@pytest.mark.slow
def test_the_embedded_policy_on_two_workers_survives_a_killed_worker_with_the_ids_of_one_process(cluster, tmp_path):
    """smollm2-135m-instruct: one process, then two workers of which one is killed mid-chunk once a chunk is on disk:
    Ray restarts it, its chunk is done again, and the run ends with every id of the one-process run exactly once."""
    import threading

    settings = {"max_prompts": 4, "chunk_size": 1, "num_demonstrations": 0, "sampling": {"max_new_tokens": 8}}
    policy = "smollm2-135m-instruct"
    pipeline.run(load_recipe(_recipe(tmp_path, policy, "local", **settings)), ["sl_generate"])
    engine = {"kind": "ray", "address": cluster.address, "workers": 2}
    folder = tmp_path / "ray" / "sl_generate"
    killed: list[int] = []
    watcher = threading.Thread(target=lambda: killed.append(cluster.kill_a_busy_worker(folder, chunks=1)))
    watcher.start()
    pipeline.run(load_recipe(_recipe(tmp_path, policy, "ray", engine, **settings)), ["sl_generate"])
    watcher.join()

    assert killed and killed[0] not in cluster.workers(), "the killed worker is still there"
    local = {r.id for r in RunView(tmp_path / "local").records("sl_generate", SLRecord)}
    assert len(local) == 4
    assert sorted(_ids_on_disk(folder)) == sorted(local)
    assert RunView(tmp_path / "ray").is_complete("sl_generate")
