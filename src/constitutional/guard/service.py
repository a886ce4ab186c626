"""One guarded completion: screen the request, forward it, screen the answer (whole, or streamed through the gate),
and answer the client in the OpenAI format whatever happened. The web framework's part is in server.py."""

from __future__ import annotations

import json

from starlette.responses import JSONResponse, Response

from constitutional.guard import wire
from constitutional.guard.classify import ClassifierError
from constitutional.guard.core import Guard
from constitutional.guard.gate import Piece
from constitutional.guard.streaming import SSEResponse, one_shot, relay
from constitutional.guard.upstream import UpstreamFailure

PATHS = {"chat": "/chat/completions", "completions": "/completions"}


async def complete(guard: Guard, exchange: wire.Exchange) -> Response:
    """The response to one completion request."""
    blocked = await _screen_input(guard, exchange)
    if blocked is not None:
        return blocked
    try:
        response = await guard.upstream.open("POST", PATHS[exchange.endpoint], exchange.raw)
    except UpstreamFailure as failure:
        return guard.failed(exchange.endpoint, failure, guard.headers(exchange))
    if exchange.stream:
        gate = guard.classifiers.gate(exchange.conversations[0])
        return SSEResponse(relay(guard, exchange, response, gate), headers=guard.headers(exchange))
    try:
        raw = await guard.upstream.read(response)
    except UpstreamFailure as failure:
        return guard.failed(exchange.endpoint, failure, guard.headers(exchange))
    return await _screen_answer(guard, exchange, raw)


async def _screen_input(guard: Guard, exchange: wire.Exchange) -> Response | None:
    """A refusal when the request is flagged (or cannot be screened and the guard fails closed), else None."""
    try:
        verdicts = await guard.classifiers.screen(exchange.conversations)
    except ClassifierError as err:
        return guard.classifier_failed(exchange, err)
    flagged = [verdict for verdict in verdicts if verdict.flagged]
    if not flagged:
        return None
    verdict = max(flagged, key=lambda v: v.score)
    guard.record_block(exchange, "input", verdict, text=exchange.conversations)
    reason = guard.reason(exchange, "input", verdict)
    headers = {**guard.headers(exchange), "x-guard-blocked": "input", "x-guard-category": reason["category"]}
    refusal = guard.settings.refusal_message
    if exchange.stream:
        return SSEResponse(one_shot(wire.refusal_stream(exchange, refusal, reason)), headers=headers)
    return JSONResponse(wire.refusal_response(exchange, refusal, reason), headers=headers)


async def _screen_answer(guard: Guard, exchange: wire.Exchange, raw: bytes) -> Response:
    """A non-streamed answer, scored whole; passed on byte for byte unless flagged."""
    headers = guard.headers(exchange)
    try:
        answer = json.loads(raw)
        texts = wire.answer_texts(exchange.endpoint, answer)
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        failure = UpstreamFailure(502, "bad_answer", "the upstream model server's answer is not OpenAI JSON")
        return guard.failed(exchange.endpoint, failure, headers)
    gate = guard.classifiers.gate(exchange.conversations[0])
    await guard.classifiers.score(gate, [Piece(None, texts)], final=True)
    if gate.error is not None:
        refusal = guard.classifier_failed(exchange, ClassifierError("output", gate.error))
        if refusal is not None:
            return refusal
    if gate.halt is None:
        guard.metrics.requests.labels(exchange.endpoint, "answered").inc()
        return Response(raw, media_type="application/json", headers=headers)
    verdict = gate.halt.verdict
    guard.record_block(exchange, "output", verdict, text=gate.text(gate.halt.choice), tokens=gate.halt.tokens)
    for choice in answer.get("choices") or ():
        wire.refused_choice(exchange.endpoint, choice, guard.settings.refusal_message)
    answer["guard"] = guard.reason(exchange, "output", verdict)
    headers.update({"x-guard-blocked": "output", "x-guard-category": answer["guard"]["category"]})
    return JSONResponse(answer, headers=headers)
