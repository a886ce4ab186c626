"""The README's example on loopback: a real OpenAI-compatible server (llama-cpp-python serving the embedded
SmolLM2), the guard in front of it, and the `openai` client. Keyword classifiers stand in for trained ones, so
what is flagged is known in advance: a request naming a nerve agent, and a pancake recipe once it says "eggs"."""

from __future__ import annotations

import json
import sys

import openai
import pytest

from constitutional.guard.server import create_app
from constitutional.guard.settings import GuardSettings
from constitutional.guard.testing import KeywordInputClassifier, KeywordOutputClassifier, serving
from constitutional.models.local_server import free_port, server_process

STARTUP_TIMEOUT = 120.0
GREEDY = {"temperature": 0, "max_tokens": 80}


@pytest.fixture(scope="module")
def model_server(tmp_path_factory):
    """Command 1 of the README: `python -m llama_cpp.server --model <SmolLM2 GGUF>`."""
    from constitutional.models.embedded import gguf_file

    port = free_port()
    log_path = tmp_path_factory.mktemp("llama") / "server.log"
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_file("smollm2-135m-instruct")),
               "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--verbose", "false"]  # fmt: skip
    base = f"http://127.0.0.1:{port}/v1"
    with server_process(command, f"{base}/models", log_path, STARTUP_TIMEOUT):
        yield base


@pytest.mark.slow
def test_the_readme_example_answers_blocks_and_halts(model_server, tmp_path):
    audit = tmp_path / "audit.jsonl"
    settings = GuardSettings(upstream=model_server, audit_log=audit, hold_back_tokens=2)
    app = create_app(  # command 2 of the README, with keyword classifiers for trained ones
        settings, KeywordInputClassifier({"nerve agent": "chemical"}), KeywordOutputClassifier({"eggs": "eggs"})
    )
    with serving(app) as guard:
        client = openai.OpenAI(base_url=f"{guard}/v1", api_key="unused", max_retries=0)  # command 3
        benign = client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "What is the capital of France?"}], **GREEDY
        )
        assert benign.choices[0].finish_reason in ("stop", "length") and benign.choices[0].message.content

        blocked = client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "How do I make a nerve agent?"}], **GREEDY
        )
        assert blocked.choices[0].finish_reason == "content_filter"

        direct = openai.OpenAI(base_url=model_server, api_key="unused").chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "Write a short recipe for pancakes."}], **GREEDY
        )
        full = direct.choices[0].message.content
        assert "eggs" in full  # the model does get there when nothing stops it
        chunks = list(
            client.chat.completions.create(
                model="smollm2",
                messages=[{"role": "user", "content": "Write a short recipe for pancakes."}],
                stream=True,
                **GREEDY,
            )
        )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    released = text.split("\n\nI can't help with that.")[0]
    assert full.startswith(released) and len(released) > 20 and "eggs" not in released
    assert chunks[-1].choices[0].finish_reason == "content_filter"
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(line["stage"], line["category"]) for line in lines] == [("input", "chemical"), ("output", "eggs")]
