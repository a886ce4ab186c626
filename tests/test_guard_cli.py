"""`cai guard serve` builds the guard from its flags and the saved classifiers, and refuses bad input by name."""

from __future__ import annotations

import sys
import types

import pytest
from typer.testing import CliRunner

from constitutional.cli import app
from constitutional.guard.testing import KeywordInputClassifier, KeywordOutputClassifier

runner = CliRunner()


@pytest.fixture
def served(monkeypatch):
    """Stand-ins for the classifier loader and uvicorn: what `serve` would load and run."""
    calls = {}

    def load_classifiers(folder):
        calls["folder"] = folder
        calls["threads_when_loaded"] = calls.get("threads")
        return KeywordInputClassifier({"x": "y"}), KeywordOutputClassifier({"x": "y"})

    saved = types.ModuleType("constitutional.classifiers.saved")
    saved.load_classifiers = load_classifiers
    monkeypatch.setitem(sys.modules, "constitutional.classifiers.saved", saved)
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **options: calls.update(app=app, options=options))
    import torch

    monkeypatch.setattr(torch, "set_num_threads", lambda count: calls.update(threads=count))
    return calls


def test_serve_builds_the_guard_from_its_flags(served, tmp_path, monkeypatch):
    monkeypatch.setenv("CAI_GUARD_UPSTREAM_API_KEY", "upstream-secret")
    audit = tmp_path / "audit.jsonl"
    result = runner.invoke(
        app,
        ["guard", "serve", "--upstream", "http://127.0.0.1:8080/v1/", "--classifiers", str(tmp_path),
         "--hold-back", "3", "--step-tokens", "5", "--classifier-threads", "2", "--port", "8123",
         "--audit-log", str(audit), "--fail-open"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert served["folder"] == tmp_path and served["options"]["port"] == 8123
    settings = served["app"].state.guard.settings
    assert settings.upstream == "http://127.0.0.1:8080/v1" and settings.hold_back_tokens == 3 and settings.fail_open
    assert settings.step_tokens == 5 and served["app"].state.guard.classifiers.gate([]).step_tokens == 5
    assert settings.classifier_threads == 2 and served["threads_when_loaded"] == 2  # set before the classifiers load
    assert settings.upstream_api_key.get_secret_value() == "upstream-secret"
    assert settings.audit_log == audit


def test_serve_refuses_a_bad_upstream_or_a_missing_folder(served, tmp_path):
    bad_url = runner.invoke(app, ["guard", "serve", "--upstream", "localhost:8080", "--classifiers", str(tmp_path)])
    assert bad_url.exit_code == 2 and "upstream" in bad_url.output and "app" not in served
    missing = runner.invoke(
        app, ["guard", "serve", "--upstream", "http://h/v1", "--classifiers", str(tmp_path / "nothing")]
    )
    assert missing.exit_code == 2 and "--classifiers" in missing.output
