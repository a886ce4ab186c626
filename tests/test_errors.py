"""Every bad input of issue 9 through the real command line: one clear error naming the file, line or field and
what to do, exit code 2, no traceback (unless `cai --debug`), and nothing half-written left on disk."""

from __future__ import annotations

import errno
import json
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from constitutional.cli import app
from constitutional.errors import InputError

runner = CliRunner()
# The smallest SL generation: enough to reach the model, not to spend time in it.
SMALL = ["--helpful-prompts", "null", "--num-revisions", "1", "--num-demonstrations", "0"]


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    from constitutional.cli import common

    monkeypatch.setattr(common.out, "width", 250)
    monkeypatch.setattr(common.console, "width", 250)
    monkeypatch.setattr(common, "DEBUG", False)


@pytest.fixture(autouse=True)
def empty_hub_cache(tmp_path_factory, monkeypatch):
    """No Hugging Face model is in the cache, whatever the machine holds."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path_factory.mktemp("hub")))


def cai(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, " ".join(result.output.split())  # one line: Rich may wrap long messages


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(code: int, output: str, *needles: str) -> None:
    assert code == 2, output
    assert "Traceback" not in output and "error:" in output, output
    for needle in needles:
        assert needle in output, f"{needle!r} not in {output!r}"


@pytest.fixture
def prompts(tmp_path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("How do I bake bread?\n", encoding="utf-8")
    return path


# ---- files that are not what they should be ---------------------------------------------------------------------


def test_a_recipe_path_that_is_a_folder(tmp_path):
    (tmp_path / "recipes").mkdir()
    refused(*cai("run", tmp_path / "recipes"), "recipes: is a folder, not a file", "give a YAML file")


def test_a_recipe_that_is_not_utf8_names_its_line(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_bytes(b"seed: 1\nsl:\n  num_revisions: \xff\xfe 2\n")
    refused(*cai("sl", "generate", "--config", path), f"{path}:3: not UTF-8", "save it as UTF-8")


@pytest.mark.parametrize("suffix", ["jsonl", "csv", "txt"])
def test_a_binary_prompt_file_names_its_line_and_writes_nothing(tmp_path, suffix):
    path = tmp_path / f"p.{suffix}"
    path.write_bytes(b"prompt\nfine\n\x89PNG\r\n\x1a\n\x00\x00\xff")
    run_dir = tmp_path / "run"
    refused(*cai("sl", "generate", "--red-team-prompts", path, "--run-dir", run_dir, *SMALL), f"{path}:3: not UTF-8")
    assert not run_dir.exists()


def test_a_binary_items_file_for_eval_mc(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_bytes(bytes(range(256)))
    refused(*cai("eval", "mc", path), f"{path}:2: not UTF-8")  # byte 10 ends line 1


@pytest.mark.parametrize("content", ["", "\n\n", '{"prompt": "  "}\n'])
def test_a_prompt_file_without_a_usable_prompt_is_an_error_not_an_empty_stage(tmp_path, content):
    path = tmp_path / ("p.jsonl" if "{" in content else "p.txt")
    path.write_text(content, encoding="utf-8")
    run_dir = tmp_path / "run"
    refused(*cai("sl", "generate", "--red-team-prompts", path, "--run-dir", run_dir, *SMALL), "no prompt to use")
    assert not run_dir.exists()


# ---- the run directory ------------------------------------------------------------------------------------------


def test_a_run_dir_that_is_a_file_or_lies_under_one(tmp_path, prompts):
    (tmp_path / "taken").write_text("mine\n")
    for run_dir, needle in (
        (tmp_path / "taken", "exists and is not a directory"),
        (tmp_path / "taken" / "run", "is a file, not a folder"),
    ):
        refused(*cai("sl", "generate", "--red-team-prompts", prompts, "--run-dir", run_dir, *SMALL), needle)
    assert (tmp_path / "taken").read_text() == "mine\n"


@pytest.mark.parametrize(("number", "words"), [(errno.EACCES, "permission denied"), (errno.EROFS, "read-only")])
def test_a_run_dir_that_cannot_be_written(tmp_path, prompts, monkeypatch, number, words):
    class Unwritable:
        def __init__(self, path):
            self.path = path

        def acquire(self, timeout=None):
            raise OSError(number, "cannot write", self.path)

    monkeypatch.setattr("constitutional.store.FileLock", Unwritable)
    run_dir = tmp_path / "run"
    code, output = cai("sl", "generate", "--red-team-prompts", prompts, "--run-dir", run_dir, *SMALL)
    refused(code, output, f"{run_dir}: cannot write here: {words}", "choose a --run-dir you can write to")


@pytest.mark.skipif(not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() == 0, reason="root")
def test_a_read_only_run_dir_for_real(tmp_path, prompts):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_dir.chmod(0o555)
    try:
        refused(*cai("sl", "generate", "--red-team-prompts", prompts, "--run-dir", run_dir, *SMALL), "cannot write")
    finally:
        run_dir.chmod(0o755)


def test_report_on_a_folder_that_is_not_a_run_writes_nothing_there(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"\xff\xd8")
    refused(*cai("report", tmp_path / "photos"), "not a run directory")
    assert tree(tmp_path / "photos") == {"cat.jpg": b"\xff\xd8"}


# ---- flags --------------------------------------------------------------------------------------------------------


def test_a_bad_flag_value_is_blamed_on_the_flag_not_on_a_recipe_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("sample:\n  max_prompts: 4\n", encoding="utf-8")
    code, output = cai("rl", "sample", "--config", recipe, "--max-prompts", "two")
    refused(code, output, "--max-prompts 'two'", "valid integer", "sample.max_prompts")
    assert str(recipe) not in output


def test_a_flag_value_that_is_not_yaml_names_the_flag(tmp_path):
    refused(*cai("sl", "generate", "--sampling.stop", "[oops"), "--sampling.stop '[oops'", "[a, b]")


# ---- models ---------------------------------------------------------------------------------------------------------


def test_a_missing_local_model_folder_is_reported_as_such(tmp_path, prompts):
    run_dir = tmp_path / "run"
    code, output = cai(
        "sl", "generate", "--red-team-prompts", prompts, "--run-dir", run_dir, "--models.policy.name", "./models/mine"
    )
    refused(code, output, "'./models/mine': no such local folder", "models.policy.name")
    assert "Repo id" not in output and not run_dir.exists()


def test_a_model_folder_with_its_own_code_says_how_to_allow_it(tmp_path, tiny_model_path, prompts):
    folder = tmp_path / "custom"
    shutil.copytree(tiny_model_path, folder)
    config = json.loads((folder / "config.json").read_text())
    config |= {"model_type": "my-llm", "auto_map": {"AutoModelForCausalLM": "modeling_my.MyForCausalLM"}}
    (folder / "config.json").write_text(json.dumps(config))
    run_dir = tmp_path / "run"
    code, output = cai(
        "sl", "generate", "--red-team-prompts", prompts, "--run-dir", run_dir, "--models.policy.name", folder, *SMALL
    )
    refused(code, output, "ships its own Python code", "models.policy.trust_remote_code: true")
    assert not run_dir.exists()


@pytest.mark.parametrize("name", ["smollm3-tiny", "someorg/some-model"])
def test_an_unknown_model_fails_fast_with_the_names_that_work(tmp_path, prompts, name):
    run_dir = tmp_path / "run"
    began = time.monotonic()
    code, output = cai(
        "sl", "generate", "--red-team-prompts", prompts, "--run-dir", run_dir, "--models.policy.name", name, *SMALL
    )
    refused(code, output, f"cannot load model '{name}'", "smollm2-135m-instruct, gemma3-270m", "base_url")
    assert time.monotonic() - began < 30  # no hub round trips, no retries
    assert not run_dir.exists()  # made for this run, and nothing was done in it


def test_an_unknown_model_for_eval_mc(tmp_path):
    refused(*cai("eval", "mc", "builtin:hhh-ours", "--model", "smollm2-135m"), "cannot load model 'smollm2-135m'")


def test_a_model_in_the_hub_cache_loads_from_there_without_the_network(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from constitutional.models.embedded import resolve

    cache = tmp_path / "hub"
    snapshot = cache / "models--someorg--some-model" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (cache / "models--someorg--some-model" / "refs").mkdir()
    (cache / "models--someorg--some-model" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    assert resolve("someorg/some-model") == str(snapshot)


# ---- a model server that answers wrongly ------------------------------------------------------------------------


class _Server(BaseHTTPRequestHandler):
    status, body = 200, b"{not json"

    def do_POST(self):
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    do_GET = do_POST  # the client may ask for /v1/models first

    def log_message(self, *args):
        pass


@pytest.mark.parametrize(
    ("status", "body", "needle"),
    [
        (200, b"{not json", "answered with something that is not JSON"),
        (200, b'{"id": "x"}', "answered JSON without the fields of an OpenAI answer"),
        (404, b'{"error": {"message": "model m not found"}}', "refused the request (404): model m not found"),
    ],
    ids=["not-json", "no-choices", "404"],
)
def test_a_model_server_answering_wrongly(tmp_path, prompts, status, body, needle):
    handler = type("Handler", (_Server,), {"status": status, "body": body})
    server = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/v1"
    run_dir = tmp_path / "run"
    try:
        code, output = cai(
            "sl", "generate", "--red-team-prompts", prompts, "--run-dir", run_dir, *SMALL,
            "--models.policy.backend", "openai", "--models.policy.base-url", url, "--models.policy.max-retries", "0",
        )  # fmt: skip
    finally:
        server.shutdown()
    refused(code, output, f"the model server at {url}", needle, "base_url")
    assert not run_dir.exists()


# ---- an error after the run directory was opened ---------------------------------------------------------------


def _complete_sl_generate(run_dir: Path) -> None:
    from constitutional.store import RunStore

    with RunStore(run_dir) as store:
        store.start("sl_generate", {"made_by": "test"})
        store.finish("sl_generate", {"records": 0}, seconds=0.0)


def test_a_stage_that_fails_before_writing_leaves_the_manifest_as_it_was(tmp_path, prompts, monkeypatch):
    run_dir = tmp_path / "run"
    _complete_sl_generate(run_dir)
    manifest = (run_dir / "manifest.json").read_bytes()

    def unloadable(spec):
        raise InputError("cannot load model 'x': gone", field="name")

    monkeypatch.setattr("constitutional.models.load_model", unloadable)
    code, output = cai(
        "rl", "sample", "--red-team-prompts", prompts, "--helpful-prompts", "null", "--run-dir", run_dir
    )
    refused(code, output, "cannot load model 'x'")
    assert (run_dir / "manifest.json").read_bytes() == manifest  # no `running` entry for a stage that never ran
    assert not (run_dir / "rl_sample").exists() and not (run_dir / "manifest.json.tmp").exists()
    assert "stopped before writing anything" in (run_dir / "stages.log").read_text()


def test_a_stage_that_wrote_records_before_failing_stays_running_for_the_resume(tmp_path, prompts, monkeypatch):
    from constitutional.records import RejectedRecord
    from constitutional.runview import RunView

    def one_record_then_fail(stage, *args):
        writer, _ = stage.writers()
        writer.write([RejectedRecord(id="a", reason="test", source="test")])
        writer.close()
        raise InputError("broken after one record")

    monkeypatch.setattr("constitutional.models.load_model", lambda spec: object())
    monkeypatch.setattr("constitutional.sl.generate", one_record_then_fail)
    run_dir = tmp_path / "run"
    refused(*cai("sl", "generate", "--red-team-prompts", prompts, "--run-dir", run_dir, *SMALL), "broken after one")
    assert RunView(run_dir).status("sl_generate").status == "running"


def test_a_stale_half_written_manifest_is_cleared_when_the_run_is_opened(tmp_path):
    from constitutional.store import RunStore

    _complete_sl_generate(tmp_path / "run")
    (tmp_path / "run" / "manifest.json.tmp").write_text("")
    RunStore(tmp_path / "run").close()
    assert not (tmp_path / "run" / "manifest.json.tmp").exists()


# ---- developers and bugs --------------------------------------------------------------------------------------------


def test_debug_keeps_the_traceback(tmp_path):
    (tmp_path / "recipes").mkdir()
    result = runner.invoke(app, ["--debug", "run", str(tmp_path / "recipes")])
    assert isinstance(result.exception, InputError)


def test_an_unexpected_error_is_one_line_that_names_debug(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("something internal")

    monkeypatch.setattr("constitutional.recipe.load_recipe", broken)
    code, output = cai("sl", "generate")
    assert code == 1 and "Traceback" not in output, output
    assert "unexpected RuntimeError: something internal" in output and "cai --debug" in output
