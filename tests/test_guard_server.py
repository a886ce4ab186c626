"""`cai guard serve` end to end on loopback: the guard (uvicorn, in a thread) in front of a scripted upstream,
called with the `openai` client and with raw HTTP to see exactly which bytes the client received."""

from __future__ import annotations

import json
import threading
import time

import httpx2
import openai
import pytest

from constitutional.classifiers.screening import OutputClassifier
from constitutional.guard.server import create_app
from constitutional.guard.settings import GuardSettings
from constitutional.guard.testing import (
    KeywordInputClassifier,
    KeywordOutputClassifier,
    Script,
    scripted_upstream,
    serving,
)


def words(text: str) -> list[str]:
    """A text as the chunks the scripted upstream streams: one word and its space each."""
    return [f"{word} " for word in text.split()]


ANSWER = words("Paris is the capital of France and has been for centuries")
# The flagged word comes after eleven words; ten more follow it, slowly enough that a guard that did not close the
# upstream stream would let the upstream finish them.
HARMFUL = words("Sure here is how step one mix the flour step two add anthrax")
FLAGGED_AT_END = HARMFUL[: HARMFUL.index("anthrax ") + 1]
HARMFUL += [f"tail{i} " for i in range(10)]
INPUT_WORDS = {"nerve agent": "chemical"}
OUTPUT_WORDS = {"anthrax": "biological"}
SCRIPTS = {
    "benign": Script(words=ANSWER),
    "halts": Script(words=HARMFUL, delay=0.05),
    "flagged-at-end": Script(words=FLAGGED_AT_END),
    "dies-flagged": Script(words=FLAGGED_AT_END + ANSWER, fail="die", after=len(FLAGGED_AT_END)),
    "dies": Script(words=ANSWER, fail="die", after=4),
    "error-500": Script(words=ANSWER, fail="status", status=500),
    "error-429": Script(words=ANSWER, fail="status", status=429),
    "hangs": Script(words=ANSWER, fail="hang"),
    "hangs-mid-stream": Script(words=ANSWER, fail="hang", after=3),
    "slow": Script(words=ANSWER, delay=0.1),
}
USER = [{"role": "user", "content": "What is the capital of France?"}]
BLOCKED_USER = [{"role": "user", "content": "How do I make a nerve agent at home?"}]


@pytest.fixture(scope="module")
def upstream():
    app, record = scripted_upstream(SCRIPTS)
    with serving(app) as url:
        yield url, record


@pytest.fixture
def start_guard(upstream, tmp_path):
    """Start a guard with settings overrides (and optionally other classifiers); yields (base URL, audit path)."""
    url, _ = upstream
    started = []

    def start(input_classifier=None, output_classifier=None, **overrides):
        settings = GuardSettings(upstream=f"{url}/v1", audit_log=tmp_path / "audit.jsonl", **overrides)
        app = create_app(
            settings,
            input_classifier or KeywordInputClassifier(INPUT_WORDS),
            output_classifier or KeywordOutputClassifier(OUTPUT_WORDS),
        )
        context = serving(app)
        base = context.__enter__()
        started.append(context)
        return base

    yield start
    for context in started:
        context.__exit__(None, None, None)


def client(base: str, **options) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=options.pop("api_key", "unused"), max_retries=0, **options)


def raw_stream(base: str, model: str, messages=USER, endpoint="chat/completions", **extra) -> list[dict | str]:
    """Every data event the client received, parsed ("[DONE]" stays a string)."""
    body = {"model": model, "stream": True, **extra}
    body.update({"messages": messages} if endpoint == "chat/completions" else {"prompt": messages[0]["content"]})
    events = []
    with httpx2.stream("POST", f"{base}/v1/{endpoint}", json=body, timeout=10) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                data = line[6:]
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


def streamed_text(events) -> str:
    parts = []
    for event in events:
        if isinstance(event, dict) and "choices" in event:
            for choice in event["choices"]:
                parts.append((choice.get("delta") or {}).get("content") or choice.get("text") or "")
    return "".join(parts)


def audit_lines(base_dir) -> list[dict]:
    path = base_dir / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_benign_request_is_answered_streamed_and_not(start_guard):
    guard = client(start_guard())
    answer = guard.chat.completions.create(model="benign", messages=USER)
    assert answer.choices[0].message.content == "".join(ANSWER)
    assert answer.choices[0].finish_reason == "stop"
    chunks = list(guard.chat.completions.create(model="benign", messages=USER, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "".join(ANSWER)
    assert chunks[-1].choices[0].finish_reason == "stop"
    text = guard.completions.create(model="benign", prompt="The capital of France is")
    assert text.choices[0].text == "".join(ANSWER)


def test_a_restricted_request_is_refused_before_the_upstream_sees_it(start_guard, upstream, tmp_path):
    base = start_guard(refusal_message="Not something I can help with.")
    _, record = upstream
    seen = len(record.requests)
    raw = client(base).chat.completions.with_raw_response.create(model="benign", messages=BLOCKED_USER)
    answer = raw.parse()
    assert answer.choices[0].finish_reason == "content_filter"
    assert answer.choices[0].message.content == "Not something I can help with."
    assert raw.headers["x-guard-category"] == "chemical" and raw.headers["x-guard-blocked"] == "input"
    events = raw_stream(base, "benign", messages=BLOCKED_USER)
    assert events[-1] == "[DONE]" and events[0]["choices"][0]["finish_reason"] == "content_filter"
    assert len(record.requests) == seen  # neither reached the upstream
    lines = audit_lines(tmp_path)
    assert [(line["stage"], line["category"]) for line in lines] == [("input", "chemical")] * 2
    assert "text" not in lines[0] and lines[0]["request_id"] == raw.headers["x-request-id"]


def test_a_streamed_answer_is_halted_before_the_flagged_text_and_the_upstream_is_closed(
    start_guard, upstream, tmp_path
):
    base = start_guard(hold_back_tokens=2, step_tokens=4, log_text=True)  # steps shorter than the answer
    _, record = upstream
    events = raw_stream(base, "halts")
    received = streamed_text(events)
    # Everything but the two held-back words before the flagged one; never the flagged word or what follows.
    assert received.startswith("Sure here is how step one mix the flour")
    assert "two" not in received and "add" not in received and "anthrax" not in received
    assert "tail" not in received
    assert events[-1] == "[DONE]"
    final = events[-2]
    assert final["choices"][0]["finish_reason"] == "content_filter"
    assert final["guard"]["category"] == "biological" and final["id"] == "cmpl-scripted"
    deadline = time.monotonic() + 3
    while record.sent and len(record.closed_early) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    stream_index = len(record.sent) - 1
    assert stream_index in record.closed_early  # the upstream saw its stream closed ...
    assert record.sent[stream_index] < len(HARMFUL)  # ... and stopped before finishing the answer
    (line,) = audit_lines(tmp_path)
    assert line["stage"] == "output" and line["category"] == "biological" and line["text"].endswith("anthrax ")
    metrics = httpx2.get(f"{base}/metrics").text
    assert 'cai_guard_blocks_total{category="biological",stage="output"} 1.0' in metrics


def test_a_non_streamed_answer_is_scored_whole(start_guard):
    raw = client(start_guard()).completions.with_raw_response.create(model="halts", prompt="Tell me")
    answer = raw.parse()
    assert answer.choices[0].finish_reason == "content_filter" and "anthrax" not in answer.choices[0].text
    assert raw.headers["x-guard-blocked"] == "output"


def test_text_completions_stream_halts_too(start_guard):
    events = raw_stream(start_guard(hold_back_tokens=0), "halts", endpoint="completions")
    received = streamed_text(events)
    assert "anthrax" not in received and received.startswith("Sure here is how step one mix the flour step two add")
    assert events[-2]["choices"][0]["finish_reason"] == "content_filter" and events[-2]["object"] == "text_completion"


def test_upstream_killed_mid_stream_ends_with_an_error_the_client_raises(start_guard):
    base = start_guard(hold_back_tokens=0)
    events = raw_stream(base, "dies")
    assert streamed_text(events) == "".join(ANSWER[:4])  # what came before the break, scored, then the error
    assert events[-2]["error"]["code"] == "broken_stream" and events[-1] == "[DONE]"
    assert 'cai_guard_upstream_errors_total{kind="broken_stream"} 1.0' in httpx2.get(f"{base}/metrics").text
    with pytest.raises(openai.APIError, match="broke off"):
        list(client(base).chat.completions.create(model="dies", messages=USER, stream=True))


@pytest.mark.parametrize(
    ("model", "status", "error"),
    [("error-500", 500, openai.InternalServerError), ("error-429", 429, openai.RateLimitError)],
)
def test_upstream_errors_keep_their_status_and_message(start_guard, model, status, error):
    base = start_guard()
    with pytest.raises(error) as caught:
        client(base).chat.completions.create(model=model, messages=USER)
    assert caught.value.status_code == status and f"scripted {status}" in caught.value.message
    if status == 429:
        assert caught.value.response.headers["retry-after"] == "7"
    with pytest.raises(error):  # a streamed request fails before its stream starts
        client(base).chat.completions.create(model=model, messages=USER, stream=True)
    assert f'cai_guard_upstream_errors_total{{kind="status_{status}"}} 2.0' in httpx2.get(f"{base}/metrics").text


def test_a_hanging_upstream_times_out_with_a_clear_error(start_guard):
    base = start_guard(read_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as caught:
        client(base, timeout=10).chat.completions.create(model="hangs", messages=USER)
    assert caught.value.status_code == 504 and "stopped sending" in caught.value.message
    events = raw_stream(base, "hangs-mid-stream", **{})
    assert streamed_text(events) == "".join(ANSWER[:3]) and events[-2]["error"]["code"] == "timeout"
    assert time.monotonic() - started < 5


def test_an_unreachable_upstream_is_a_502(tmp_path):
    settings = GuardSettings(upstream="http://127.0.0.1:9/v1", audit_log=None, connect_timeout=1)
    app = create_app(settings, KeywordInputClassifier({}), KeywordOutputClassifier({}))
    with serving(app) as base, pytest.raises(openai.APIStatusError) as caught:
        client(base).chat.completions.create(model="benign", messages=USER)
    assert caught.value.status_code == 502 and "cannot reach the upstream" in caught.value.message


class Raising(OutputClassifier):
    """A classifier that raises on every call, as a crashed model would."""

    threshold = 0.5

    def screen(self, conversations):
        raise RuntimeError("input model crashed")

    def start(self, conversation):
        return self

    def push(self, text):
        raise RuntimeError("output model crashed")

    def push_many(self, texts):
        raise RuntimeError("output model crashed")

    def count(self, text):
        return len(text.split())

    tokens = 0


def test_a_failing_input_classifier_fails_closed_unless_set_open(start_guard, tmp_path):
    closed = start_guard(input_classifier=Raising())
    with pytest.raises(openai.APIStatusError) as caught:
        client(closed).chat.completions.create(model="benign", messages=USER)
    assert caught.value.status_code == 503 and "fails closed" in caught.value.message
    opened = start_guard(input_classifier=Raising(), fail_open=True)
    answer = client(opened).chat.completions.create(model="benign", messages=USER)
    assert answer.choices[0].message.content == "".join(ANSWER)
    assert [line["action"] for line in audit_lines(tmp_path)] == ["refused", "allowed"]


@pytest.mark.parametrize("step", [1, 16])  # it fails mid-stream, or at the end (the answer is 11 tokens)
def test_a_failing_output_classifier_ends_the_stream_unless_set_open(start_guard, step):
    events = raw_stream(start_guard(output_classifier=Raising(), step_tokens=step), "benign")
    assert streamed_text(events) == "" and events[-2]["error"]["code"] == "classifier_unavailable"
    events = raw_stream(start_guard(output_classifier=Raising(), fail_open=True, step_tokens=step), "benign")
    assert streamed_text(events) == "".join(ANSWER) and events[-1] == "[DONE]"


def test_the_proxy_key_is_required_and_the_upstream_key_is_its_own(start_guard, upstream):
    base = start_guard(api_key="proxy-secret")
    for key in ("wrong", ""):
        with pytest.raises(openai.AuthenticationError):
            client(base, api_key=key or "x").chat.completions.create(model="benign", messages=USER)
    answer = client(base, api_key="proxy-secret").chat.completions.create(model="benign", messages=USER)
    assert answer.choices[0].message.content == "".join(ANSWER)
    assert httpx2.get(f"{base}/health").status_code == 200  # liveness needs no key, like vLLM's


def test_a_request_larger_than_allowed_is_refused(start_guard):
    base = start_guard(max_request_bytes=2_000)
    long = [{"role": "user", "content": "x" * 5_000}]
    with pytest.raises(openai.APIStatusError) as caught:
        client(base).chat.completions.create(model="benign", messages=long)
    assert caught.value.status_code == 413

    def chunked():  # no Content-Length: the limit holds while the body is read
        yield b'{"model": "benign", "messages": [{"role": "user", "content": "'
        yield b"x" * 5_000
        yield b'"}]}'

    assert httpx2.post(f"{base}/v1/chat/completions", content=chunked()).status_code == 413


def test_requests_over_the_concurrency_limit_are_refused_at_once(start_guard):
    base = start_guard(max_concurrent_requests=1)
    slow = threading.Thread(target=lambda: raw_stream(base, "slow"))
    slow.start()
    time.sleep(0.3)
    with pytest.raises(openai.RateLimitError, match="limit of 1"):
        client(base).chat.completions.create(model="benign", messages=USER)
    slow.join()
    assert client(base).chat.completions.create(model="benign", messages=USER).choices[0].finish_reason == "stop"


def test_malformed_requests_get_a_400_naming_the_problem(start_guard):
    base = start_guard()
    bad = httpx2.post(f"{base}/v1/chat/completions", content=b"{not json")
    assert bad.status_code == 400 and "not JSON" in bad.json()["error"]["message"]
    tokens = httpx2.post(f"{base}/v1/completions", json={"model": "benign", "prompt": [1, 2, 3]})
    assert tokens.status_code == 400 and "token ids" in tokens.json()["error"]["message"]


def test_models_are_passed_through_and_metrics_count_requests(start_guard):
    base = start_guard()
    models = client(base).models.list()
    assert {m.id for m in models.data} == set(SCRIPTS)
    client(base).chat.completions.create(model="benign", messages=USER)
    metrics = httpx2.get(f"{base}/metrics").text
    assert 'cai_guard_requests_total{endpoint="chat",outcome="answered"} 1.0' in metrics
    assert 'cai_guard_classifier_seconds_count{stage="input"} 1.0' in metrics


class SlowInput(KeywordInputClassifier):
    def screen(self, conversations):
        time.sleep(0.2)
        return super().screen(conversations)


class SlowOutput(KeywordOutputClassifier):
    """Its first push takes 1.5 s, as a forward pass on a busy CPU might."""

    def start(self, conversation):
        stream = super().start(conversation)
        push = stream.push

        def slow_push(text):
            if not stream.words:
                time.sleep(1.5)
            return push(text)

        stream.push = slow_push
        return stream


def test_classifiers_run_off_the_event_loop_and_inputs_are_batched(start_guard):
    inputs = SlowInput(INPUT_WORDS)
    base = start_guard(input_classifier=inputs, output_classifier=SlowOutput(OUTPUT_WORDS))
    stream = threading.Thread(target=lambda: raw_stream(base, "benign"))
    stream.start()
    time.sleep(0.6)  # past the input screening (0.2 s): the stream's first piece is being scored
    started = time.monotonic()
    assert httpx2.get(f"{base}/health").status_code == 200
    assert time.monotonic() - started < 1.0  # blocked by the scoring, it would take over 1.3 s
    stream.join()
    answers = []
    body = {"model": "hangs", "messages": BLOCKED_USER}  # refused at input: "hangs" is never reached
    send = lambda: answers.append(httpx2.post(f"{base}/v1/chat/completions", json=body, timeout=10))  # noqa: E731
    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [a.json()["choices"][0]["finish_reason"] for a in answers] == ["content_filter"] * 8
    assert max(inputs.batches) > 1 and sum(inputs.batches) == 9  # 8 requests in fewer calls, plus the first


def test_a_client_leaving_mid_stream_closes_the_upstream_stream(start_guard, upstream):
    base = start_guard(hold_back_tokens=0)
    _, record = upstream
    body = {"model": "slow", "stream": True, "messages": USER}
    with httpx2.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=10) as response:
        next(response.iter_lines())
        index = len(record.sent) - 1
    deadline = time.monotonic() + 3
    while index not in record.closed_early and time.monotonic() < deadline:
        time.sleep(0.05)
    assert index in record.closed_early and record.sent[index] < len(ANSWER)


class CountingOutput(KeywordOutputClassifier):
    """Records every push, and fails the test if two pushes ever run at once (the guard promises one call at a
    time, so a classifier need not be thread-safe)."""

    def __init__(self, keywords):
        super().__init__(keywords)
        self.pushes = 0
        self.running = threading.Lock()

    def start(self, conversation):
        stream = super().start(conversation)
        push = stream.push

        def exclusive_push(text):
            assert self.running.acquire(blocking=False), "two pushes ran at once"
            try:
                time.sleep(0.002)
                self.pushes += 1
                return push(text)
            finally:
                self.running.release()

        stream.push = exclusive_push
        return stream


def test_output_scoring_of_concurrent_streams_is_batched_one_job_at_a_time(start_guard):
    output = CountingOutput(OUTPUT_WORDS)
    base = start_guard(output_classifier=output, hold_back_tokens=0, step_tokens=1)
    texts = []
    threads = [
        threading.Thread(target=lambda: texts.append(streamed_text(raw_stream(base, "benign")))) for _ in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert texts == ["".join(ANSWER)] * 6
    metrics = httpx2.get(f"{base}/metrics").text
    jobs = float(metrics.split('cai_guard_classifier_seconds_count{stage="output"} ')[1].split()[0])
    assert output.pushes == 6 * len(ANSWER) and jobs < output.pushes  # several streams' pieces per job


class SteppedOutput(KeywordOutputClassifier):
    """Takes 50 ms per classifier step however many pieces it reads (as a forward pass does), and records how many
    pieces each step read."""

    def __init__(self, keywords):
        super().__init__(keywords)
        self.steps = []

    def start(self, conversation):
        stream = super().start(conversation)
        push_many = stream.push_many

        def slow_push_many(texts):
            time.sleep(0.05)
            self.steps.append(len(texts))
            return push_many(texts)

        stream.push_many = slow_push_many
        return stream


def test_tokens_arriving_during_a_classifier_step_are_scored_together_in_the_next(start_guard):
    output = SteppedOutput(OUTPUT_WORDS)
    base = start_guard(output_classifier=output, hold_back_tokens=0, step_tokens=1)
    assert streamed_text(raw_stream(base, "benign")) == "".join(ANSWER)
    assert sum(output.steps) == len(ANSWER) and len(output.steps) <= len(ANSWER) / 3


def test_a_streamed_answer_goes_out_only_as_it_is_scored_in_steps(start_guard):
    """The client reads along a slow upstream: whenever text arrives, the classifier has already scored it and two
    tokens more (until the end); the classifier read the answer in steps of at least four tokens but its end."""
    output = SteppedOutput(OUTPUT_WORDS)
    output.texts = []
    steps = output.start
    output.start = lambda conversation: _recording(steps(conversation), output.texts)
    base = start_guard(output_classifier=output, hold_back_tokens=2, step_tokens=4)
    body = {"model": "slow", "stream": True, "messages": USER}
    received = ""
    with httpx2.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=10) as response:
        for line in response.iter_lines():
            text = streamed_text([json.loads(line[6:])]) if line.startswith("data: {") else ""
            if text:
                received += text
                scored = "".join(output.texts)
                assert scored.startswith(received)
                if scored != "".join(ANSWER):  # until the answer's end is scored, two tokens stay held
                    assert len(scored[len(received) :].split()) >= 2
    assert received == "".join(ANSWER)
    assert output.steps[0] == 3  # the first step: hold-back + 1 tokens, all the first token needs to go out
    assert all(size >= 4 for size in output.steps[1:-1]) and sum(output.steps) == len(ANSWER)
    assert len(output.steps) < len(ANSWER) / 2


def _recording(stream, texts: list[str]):
    push_many = stream.push_many
    stream.push_many = lambda pieces: texts.extend(pieces) or push_many(pieces)
    return stream


def test_an_answer_flagged_in_its_last_unscored_tokens_is_halted_at_its_end(start_guard, tmp_path):
    base = start_guard(hold_back_tokens=2, step_tokens=100)  # nothing is scored before the answer ends
    events = raw_stream(base, "flagged-at-end")
    released = "".join(FLAGGED_AT_END[:-3])  # as one by one: all but the two held back and the flagged word
    assert streamed_text(events) == released + "\n\nI can't help with that."
    assert events[-2]["choices"][0]["finish_reason"] == "content_filter" and events[-1] == "[DONE]"
    answer = client(base).chat.completions.create(model="flagged-at-end", messages=USER)  # not streamed: likewise
    assert answer.choices[0].finish_reason == "content_filter" and "anthrax" not in answer.choices[0].message.content
    assert [line["stage"] for line in audit_lines(tmp_path)] == ["output", "output"]


def test_an_upstream_breaking_off_after_flagged_text_is_halted_not_passed_on(start_guard):
    base = start_guard(hold_back_tokens=0, step_tokens=100)
    events = raw_stream(base, "dies-flagged")
    released = "".join(FLAGGED_AT_END[:-1])  # all of it scored, the flagged word withheld
    assert streamed_text(events) == released + "\n\nI can't help with that."
    assert events[-2]["choices"][0]["finish_reason"] == "content_filter" and events[-1] == "[DONE]"
    # The flag may come before the break is read (the first step scores what has come by then), never after a send.
    assert 'cai_guard_blocks_total{category="biological",stage="output"} 1.0' in httpx2.get(f"{base}/metrics").text
