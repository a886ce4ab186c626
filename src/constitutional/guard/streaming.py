"""A streamed answer through the output gate: upstream events are scored as they arrive and forwarded byte for
byte once released; a flag closes the upstream stream (it stops generating) and ends the client's stream with a
content_filter chunk, so the flagged text and what was held back before it never leave the guard."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import aclosing, suppress
from typing import Any

import httpx2
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from constitutional.guard import wire
from constitutional.guard.classify import ClassifierError
from constitutional.guard.core import Guard
from constitutional.guard.gate import OutputGate, Piece, refusal_after
from constitutional.guard.upstream import UpstreamFailure

_HEAD_FIELDS = ("id", "created", "model", "system_fingerprint")


class SSEResponse(StreamingResponse):
    """A server-sent-event stream whose producer is always closed, also when the client leaves mid-stream (then
    Starlette stops iterating without closing it, and the upstream would go on generating until collected)."""

    def __init__(self, content: AsyncIterator[bytes], headers: dict[str, str]):
        headers = {**headers, "cache-control": "no-cache", "x-accel-buffering": "no"}
        super().__init__(content, headers=headers, media_type="text/event-stream")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()


async def one_shot(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def read_ahead(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The upstream's bytes, read on while the consumer is busy scoring: each step yields all that arrived since
    the last, so the tokens that came during one classifier step are scored together in the next (a forward pass
    costs about the same for one token as for several). A read error is raised after the bytes before it."""
    queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for data in chunks:
                queue.put_nowait(data)
        except Exception as err:
            queue.put_nowait(err)
        else:
            queue.put_nowait(None)

    reader = asyncio.create_task(pump())
    try:
        while True:
            items = [await queue.get()]
            while not queue.empty():
                items.append(queue.get_nowait())
            data = b"".join(item for item in items if isinstance(item, bytes))
            if data:
                yield data
            if isinstance(items[-1], BaseException):
                raise items[-1]
            if items[-1] is None:
                return
    finally:
        reader.cancel()
        with suppress(asyncio.CancelledError):
            await reader


async def relay(
    guard: Guard, exchange: wire.Exchange, response: httpx2.Response, gate: OutputGate[bytes]
) -> AsyncIterator[bytes]:
    """The client's stream: released upstream events, then [DONE], a content_filter chunk, or an error event.

    The answer ends at [DONE], at the end of the upstream's body, or where the upstream broke off: what waits
    unscored is scored then, like any other step, before any of it goes out (a flag there halts the answer)."""
    splitter = wire.EventSplitter()
    head: dict[str, Any] = {}  # the completion's id, model, created: the guard's own last chunk repeats them
    failure: UpstreamFailure | None = None
    outcome = "disconnected"  # unless the stream reaches one of its ends
    try:
        async with aclosing(read_ahead(response.aiter_bytes())) as chunks:
            done = False
            while not done:
                try:
                    data = await anext(chunks, b"")  # read_ahead yields no empty bytes: b"" is the body's end
                except httpx2.TransportError as err:
                    data, failure = b"", _upstream_failure(guard, err)
                pieces, done = _pieces(exchange.endpoint, splitter.feed(data), head)
                done = done or not data
                released = await guard.classifiers.score(gate, pieces, final=done)
                if gate.error is not None:
                    guard.classifier_failed(exchange, ClassifierError("output", gate.error))
                    if not guard.settings.fail_open:
                        outcome = "error"
                        yield b"".join(released) + _classifier_unavailable(exchange)
                        return
                    released += gate.unscreened()
                if gate.halt is not None:
                    outcome = "blocked_output"
                    await chunks.aclose()  # first of all: stop reading, and the upstream stops generating
                    await response.aclose()
                    yield b"".join(released) + _halted(guard, exchange, gate, head)
                    return
                if released and not done:
                    yield b"".join(released)
        outcome = "answered" if failure is None else "error"
        yield b"".join(released) + (wire.DONE if failure is None else _broken(guard, exchange, failure))
    finally:
        await response.aclose()
        if outcome not in ("blocked_output", "error"):  # those are counted where they happen
            guard.metrics.requests.labels(exchange.endpoint, outcome).inc()


def _pieces(endpoint: wire.Endpoint, events: list[bytes], head: dict[str, Any]) -> tuple[list[Piece[bytes]], bool]:
    """Stream events as gate pieces (raw bytes to forward, answer text to score); True once [DONE] came."""
    pieces = []
    for event in events:
        data = wire.event_data(event)
        if data is None:  # a comment or keep-alive: forwarded, nothing to score
            pieces.append(Piece(event + b"\n\n"))
            continue
        if data.strip() == b"[DONE]":
            return pieces, True
        try:
            payload = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            payload = None
        if not isinstance(payload, dict):
            continue  # not an OpenAI event: never forwarded unscreened
        if not head:
            head.update((key, payload[key]) for key in _HEAD_FIELDS if key in payload)
        pieces.append(Piece(event + b"\n\n", wire.chunk_texts(endpoint, payload)))
    return pieces, False


def _halted(guard: Guard, exchange: wire.Exchange, gate: OutputGate[bytes], head: dict[str, Any]) -> bytes:
    halt = gate.halt
    guard.record_block(exchange, "output", halt.verdict, text=gate.text(halt.choice), tokens=halt.tokens)
    message = refusal_after(gate.released_text, guard.settings.refusal_message)
    choices = sorted(set(gate.streams) | {halt.choice})
    reason = guard.reason(exchange, "output", halt.verdict)
    return wire.final_chunk(exchange.endpoint, head, choices, message, reason) + wire.DONE


def _upstream_failure(guard: Guard, err: httpx2.TransportError) -> UpstreamFailure:
    """What broke the upstream's stream, counted whether the answer then ends in an error or a halt."""
    failure = guard.upstream.timed_out(err) if isinstance(err, httpx2.TimeoutException) else guard.upstream.broken(err)
    guard.metrics.upstream_errors.labels(failure.kind).inc()
    return failure


def _broken(guard: Guard, exchange: wire.Exchange, failure: UpstreamFailure) -> bytes:
    """The upstream broke off after what was released (all of it scored): an error event, which the openai client
    raises."""
    guard.metrics.requests.labels(exchange.endpoint, "error").inc()
    return _error_event(failure.message, "upstream_error", failure.kind)


def _classifier_unavailable(exchange: wire.Exchange) -> bytes:
    message = (
        f"the output classifier failed; the guard fails closed and ended the answer (request {exchange.request_id})"
    )
    return _error_event(message, "guard_error", "classifier_unavailable")


def _error_event(message: str, kind: str, code: str) -> bytes:
    return wire.event_bytes(wire.error_body(message, kind, code)) + wire.DONE
