"""Stand-ins for exercising the guard without trained classifiers or a model: keyword classifiers that implement the
screening protocols, a scripted OpenAI-compatible upstream, and a uvicorn server on loopback in a thread (a server
in a process of its own: `constitutional.models.local_server`).

Used by the guard's tests and benchmarks; the keyword classifiers are no safeguard (a synonym walks past them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from constitutional.classifiers.screening import AnswerStream, OutputClassifier, Verdict
from constitutional.models.base import Message

FLAGGED, CLEAR = 0.99, 0.01


def _category(text: str, keywords: Mapping[str, str]) -> str | None:
    lowered = text.lower()
    return next((category for word, category in keywords.items() if word in lowered), None)


class KeywordInputClassifier:
    """Flags a conversation whose last user message holds a keyword; the category is the keyword's."""

    threshold = 0.5

    def __init__(self, keywords: Mapping[str, str]):
        self.keywords = dict(keywords)
        self.batches: list[int] = []  # conversations per call, for tests of batching

    def screen(self, conversations: Sequence[Sequence[Message]]) -> list[Verdict]:
        self.batches.append(len(conversations))
        verdicts = []
        for conversation in conversations:
            last = next((m["content"] for m in reversed(conversation) if m["role"] == "user"), "")
            category = _category(last, self.keywords)
            verdicts.append(Verdict(score=FLAGGED if category else CLEAR, flagged=bool(category), category=category))
        return verdicts


@dataclass
class KeywordAnswerStream(AnswerStream):
    """Counts whitespace-separated words as tokens; flags once a keyword has appeared (running maximum)."""

    keywords: Mapping[str, str]
    words: int = 0
    tail: str = ""  # the end of what was pushed: a keyword split across pieces is still seen
    verdict: Verdict = field(default_factory=lambda: Verdict(score=CLEAR, flagged=False))

    def push(self, text: str) -> Verdict:
        self.words += len(text.split())
        if not self.verdict.flagged:
            category = _category(self.tail + text, self.keywords)
            if category:
                self.verdict = Verdict(score=FLAGGED, flagged=True, category=category)
        self.tail = (self.tail + text)[-64:]
        return self.verdict

    def count(self, text: str) -> int:
        return len(text.split())

    @property
    def tokens(self) -> int:
        return self.words


class KeywordOutputClassifier(OutputClassifier):
    threshold = 0.5

    def __init__(self, keywords: Mapping[str, str]):
        self.keywords = dict(keywords)

    def start(self, conversation: Sequence[Message]) -> KeywordAnswerStream:
        return KeywordAnswerStream(self.keywords)


@dataclass
class Script:
    """What the scripted upstream answers: `words` streamed one per chunk, `delay` seconds apart; `fail` picks a
    fault ("die" after `after` chunks, "hang" before answering or after `after` chunks, "status" with `status`)."""

    words: list[str]
    delay: float = 0.0
    fail: str | None = None
    after: int = 0
    status: int = 500


@dataclass
class UpstreamLog:
    """What the scripted upstream saw: requests, chunks sent per stream, and streams the client closed early."""

    requests: list[dict] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)
    closed_early: list[int] = field(default_factory=list)


def scripted_upstream(scripts: Mapping[str, Script]) -> tuple[Starlette, UpstreamLog]:
    """An OpenAI-compatible app whose answer is the script named by the request's `model`."""
    record = UpstreamLog()

    async def completion(request: Request) -> Response:
        body = await request.json()
        record.requests.append(body)
        script = scripts[body.get("model", "")]
        chat = request.url.path.endswith("/chat/completions")
        if script.fail == "status":
            headers = {"retry-after": "7"} if script.status == 429 else {}
            error = {"error": {"message": f"scripted {script.status}", "type": "server_error", "code": script.status}}
            return JSONResponse(error, script.status, headers=headers)
        if script.fail == "hang" and not script.after:
            await _wait_for_disconnect(request)
            return Response(status_code=204)
        if body.get("stream"):
            return StreamingResponse(_stream(request, script, chat, record), media_type="text/event-stream")
        text = "".join(script.words)
        choice = {"index": 0, "finish_reason": "stop"}
        choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
        return JSONResponse(_completion(chat, [choice], chunk=False))

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": name, "object": "model"} for name in scripts]})

    routes = [
        Route("/v1/chat/completions", completion, methods=["POST"]),
        Route("/v1/completions", completion, methods=["POST"]),
        Route("/v1/models", models),
    ]
    return Starlette(routes=routes), record


def _completion(chat: bool, choices: list[dict], chunk: bool) -> dict:
    kind = ("chat.completion.chunk" if chunk else "chat.completion") if chat else "text_completion"
    return {"id": "cmpl-scripted", "object": kind, "created": 1, "model": "scripted", "choices": choices}


class _Killed(Exception):
    """Raised inside a stream: uvicorn then drops the connection mid-body, as a killed server would."""


async def _stream(request: Request, script: Script, chat: bool, record: UpstreamLog):
    index = len(record.sent)
    record.sent.append(0)
    finished = False
    try:
        if chat:
            yield _event(
                _completion(chat, [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}], True)
            )
        for number, word in enumerate(script.words):
            if number == script.after and script.fail == "die":
                raise _Killed
            if number == script.after and script.fail == "hang":
                await _wait_for_disconnect(request)
            choice = {"index": 0, "finish_reason": None}
            choice.update({"delta": {"content": word}} if chat else {"text": word})
            yield _event(_completion(chat, [choice], True))
            record.sent[index] += 1
            await asyncio.sleep(script.delay)
        last = {"index": 0, "finish_reason": "stop"}
        last.update({"delta": {}} if chat else {"text": ""})
        yield _event(_completion(chat, [last], True))
        yield b"data: [DONE]\n\n"
        finished = True
    finally:
        if not finished:
            record.closed_early.append(index)


def _event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


async def _wait_for_disconnect(request: Request, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and not await request.is_disconnected():
        await asyncio.sleep(0.05)


@contextlib.contextmanager
def serving(app, log_level: str = "critical") -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a free loopback port in a thread; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=2, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
