"""`cai run RECIPE --dry-run`: a good recipe passes and writes nothing; a dead server, a missing file, an unknown model
and a GPU that is not there each fail with one line naming the recipe field; the memory estimate is the hand sum."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from constitutional import dryrun
from constitutional.cli import app
from constitutional.memory import read_shape
from constitutional.models.local_server import free_port
from constitutional.recipe import load_recipe, parse_overrides

RECIPES = Path(__file__).parent.parent / "recipes"
SERVED = "served-feedback"


class ModelList(BaseHTTPRequestHandler):
    """An OpenAI-compatible server as far as `GET /v1/models` goes; counts the requests it gets."""

    requests: list[str]

    def do_GET(self):
        self.requests.append(self.path)
        body = json.dumps({"object": "list", "data": [{"id": SERVED, "object": "model"}]}).encode()
        self.send_response(200 if self.path == "/v1/models" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """(base_url, the paths requested) of a model-list server on loopback."""
    handler = type("Handler", (ModelList,), {"requests": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", handler.requests
    httpd.shutdown()
    httpd.server_close()


def _dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"  # the port was free a moment ago and nothing listens on it now


def _recipe(folder: Path, chat_model: Path, base_model: Path, feedback_url: str, **changes) -> Path:
    prompts = folder / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"How do I tie knot {i}?"}) + "\n" for i in range(3)))
    tiny = {"name": str(chat_model), "dtype": "float32", "batch_size": 8}
    served = {"name": SERVED, "backend": "openai", "base_url": feedback_url}
    recipe = {
        "run_dir": str(folder / "run"),
        "models": {"policy": tiny, "feedback": served, "judge": {**tiny, "name": str(base_model)}},
        "sl": {"red_team_prompts": str(prompts), "helpful_prompts": None, "sampling": {"max_new_tokens": 6}},
        "sl_train": {"batch_size": 2, "lora_r": 4},
        "sample": {"red_team_prompts": str(prompts), "helpful_prompts": None, "sampling": {"max_new_tokens": 6}},
        "pm": {"base_model": str(chat_model), "lora_r": 4},
        "rl": {"red_team_prompts": str(prompts), "helpful_prompts": None, "batch_size": 2, "num_generations": 2},
        "evaluate": {"red_team_prompts": str(prompts), "helpful_prompts": str(prompts), "judge_items": None},
    }
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = recipe
        for part in parents:
            node = node[part]
        node[leaf] = value
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _tree(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in sorted(folder.rglob("*"))}


def _dry_run(recipe: Path):
    return CliRunner().invoke(app, ["run", str(recipe), "--dry-run"], terminal_width=400)


def test_a_good_recipe_passes_and_writes_nothing(tmp_path, tiny_model_path, tiny_base_model_path, server, monkeypatch):
    url, requests = server
    recipe = _recipe(tmp_path, tiny_model_path, tiny_base_model_path, url)
    monkeypatch.chdir(tmp_path)
    before = _tree(tmp_path), _tree(tiny_model_path)
    result = _dry_run(recipe)
    assert result.exit_code == 0, result.output
    assert (_tree(tmp_path), _tree(tiny_model_path)) == before
    for stage in ("sl_generate", "sl_train", "rl_sample", "rl_label", "pm_train", "rl_train", "evaluate"):
        assert f"{stage} (run)" in result.output
    assert requests == ["/v1/models"]  # the server was asked, once
    assert "ready to run; nothing was written" in result.output and "error" not in result.output


def test_a_dead_server_fails_naming_its_field(tmp_path, tiny_model_path, tiny_base_model_path):
    dead = _dead_url()
    result = _dry_run(_recipe(tmp_path, tiny_model_path, tiny_base_model_path, dead))
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    where = f"{tmp_path / 'recipe.yaml'}: field 'models.feedback.base_url'"
    assert errors == [
        f"error: {where}: cannot reach {dead}/models ([Errno 111] Connection refused) -> start the server first "
        "(the recipe's comments give the command), or fix base_url"
    ]
    assert not (tmp_path / "run").exists()


def test_a_missing_file_fails_naming_its_field(tmp_path, tiny_model_path, tiny_base_model_path, server):
    missing = tmp_path / "nowhere.jsonl"
    recipe = _recipe(tmp_path, tiny_model_path, tiny_base_model_path, server[0], sl__red_team_prompts=str(missing))
    result = _dry_run(recipe)
    assert result.exit_code == 2
    assert f"field 'sl.red_team_prompts': no such file: {missing}" in result.output
    assert result.output.count("error:") == 1


def test_an_unknown_model_fails_naming_its_field(tmp_path, tiny_model_path, tiny_base_model_path, server):
    recipe = _recipe(tmp_path, tiny_model_path, tiny_base_model_path, server[0], pm__base_model="no-such-model")
    result = _dry_run(recipe)
    assert result.exit_code == 2
    assert "field 'pm.base_model.name': cannot load model 'no-such-model'" in result.output
    assert result.output.count("error:") == 1  # pm_train and rl_train both load it: reported once


def test_a_model_on_a_gpu_that_is_not_there_fails(
    tmp_path, tiny_model_path, tiny_base_model_path, server, monkeypatch
):
    monkeypatch.setattr(dryrun, "_gpu", lambda: False)
    recipe = _recipe(tmp_path, tiny_model_path, tiny_base_model_path, server[0], models__judge__device="cuda")
    result = _dry_run(recipe)
    assert result.exit_code == 2
    assert "field 'models.judge.device': 'cuda', but no CUDA GPU is visible" in result.output


def test_a_server_that_serves_another_model_is_a_warning(tmp_path, tiny_model_path, tiny_base_model_path, server):
    recipe = _recipe(tmp_path, tiny_model_path, tiny_base_model_path, server[0], models__feedback__name="other")
    result = _dry_run(recipe)
    assert result.exit_code == 0
    assert f"field 'models.feedback.name': {server[0]} serves {SERVED}, not 'other'" in result.output


def test_the_memory_estimate_is_the_hand_computed_sum(tmp_path, tiny_model_path, tiny_base_model_path, server):
    recipe = load_recipe(_recipe(tmp_path, tiny_model_path, tiny_base_model_path, server[0]))
    plan = dryrun.plan_run(recipe, ["sl_generate", "sl_train", "rl_sample", "rl_label", "pm_train"])
    assert plan.errors == []
    rows = {stage.name: stage.rows[0] for stage in plan.stages}
    # The tiny Llama of conftest.py: hidden 32, MLP 64, 2 layers, 4 heads of 8, 2 key/value heads, untied head.
    vocab = json.loads((tiny_model_path / "config.json").read_text())["vocab_size"]  # the trained tokenizer's size
    hidden, mlp, layers, kv = 32, 64, 2, 2 * 8
    attention = [(hidden, hidden), (kv, hidden), (kv, hidden), (hidden, hidden)]  # (outputs, inputs): q, k, v, o
    linear = [*attention, (mlp, hidden), (mlp, hidden), (hidden, mlp)]  # gate, up, down
    parameters = 2 * vocab * hidden + layers * (sum(o * i for o, i in linear) + 2 * hidden) + hidden
    assert read_shape(tiny_model_path).parameters == parameters
    # sl_generate, float32: the weights, and keys + values for 8 sequences of 1024 prompt + 6 new tokens, and the
    # store of what earlier generation calls read, at its budget.
    assert rows["sl_generate"].weights == 4 * parameters
    assert rows["sl_generate"].kv == 2 * layers * 8 * (1024 + 6) * kv * 4 + 2**30
    # sl_train, LoRA rank 4: float32 weights; each adapter value held with its gradient and two Adam moments.
    adapters = layers * sum(4 * (o + i) for o, i in linear)
    assert rows["sl_train"].weights == 4 * parameters and rows["sl_train"].training == 16 * adapters
    assert rows["pm_train"].training == 16 * (adapters + hidden)  # the score head trains in full
    assert plan.stages[0].peak == 4 * parameters + rows["sl_generate"].kv


@pytest.mark.parametrize("name", ["gpu.yaml", "gpu-multinode.yaml"])
def test_the_gpu_recipes_fail_here_only_for_the_gpu_the_servers_and_the_weights(name, monkeypatch):
    monkeypatch.setattr(dryrun, "_gpu", lambda: False)
    # Their servers are other hosts (or ports someone may use): here they are a loopback port nothing listens on.
    recipe = load_recipe(RECIPES / name)
    dead = _dead_url()
    flags = [
        f"--models.{role}.base_url"
        for role in ("policy", "feedback", "judge")
        if getattr(recipe.models, role).base_url
    ]
    plan = dryrun.plan_run(load_recipe(RECIPES / name, parse_overrides([x for f in flags for x in (f, dead)], None)))
    expected = ("but no CUDA GPU is visible", "cannot reach http://", "no Hugging Face model by that id in the cache")
    assert plan.errors and all(any(reason in error for reason in expected) for error in plan.errors), plan.errors
    assert any("models.policy.device" in error for error in plan.errors)
    assert any("base_url" in error for error in plan.errors)


def test_a_complete_stage_is_shown_as_skipped_and_a_changed_one_as_redone(
    tmp_path, tiny_model_path, tiny_base_model_path, server
):
    from constitutional.stages import STAGES, local_fingerprint, upstream_hashes
    from constitutional.store import RunStore

    path = _recipe(tmp_path, tiny_model_path, tiny_base_model_path, server[0])
    recipe, stage = load_recipe(path), STAGES["sl_generate"]
    with RunStore(recipe.run_dir) as store:  # sl_generate complete, as `cai run` leaves it
        store.start(
            stage.name, {**local_fingerprint(recipe, stage), "upstream": upstream_hashes(recipe, stage, store)}
        )
        store.finish(stage.name, {}, 1.0)
    planned = dryrun.plan_run(recipe, ["sl_generate", "sl_train"]).stages
    assert [(s.name, s.action, len(s.rows)) for s in planned] == [
        ("sl_generate", "skip: complete", 0),
        ("sl_train", "run", 1),
    ]
    changed = load_recipe(path, parse_overrides(["--sl.num_revisions", "2"], None))
    assert dryrun.plan_run(changed, ["sl_generate"]).stages[0].action == "redo: settings changed"
