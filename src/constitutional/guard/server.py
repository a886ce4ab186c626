"""`cai guard serve`: an OpenAI-compatible proxy, shaped like vLLM's server (FastAPI, `/v1/...`, `/health`,
Prometheus `/metrics`, server-sent events), so a client swaps its base URL and nothing else."""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import uuid

import httpx2
from fastapi import FastAPI, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from constitutional.classifiers.screening import InputClassifier, OutputClassifier
from constitutional.guard import wire
from constitutional.guard.audit import AuditLog
from constitutional.guard.classify import Classifiers
from constitutional.guard.core import Guard
from constitutional.guard.metrics import GuardMetrics
from constitutional.guard.service import complete
from constitutional.guard.settings import GuardSettings
from constitutional.guard.upstream import Upstream, UpstreamFailure

log = logging.getLogger("constitutional.guard")
# A client's own X-Request-Id is kept (it ties our audit line to its logs) when it is a plain token.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def create_app(
    settings: GuardSettings,
    input_classifier: InputClassifier,
    output_classifier: OutputClassifier,
    upstream: httpx2.AsyncClient | None = None,
) -> FastAPI:
    """The guard as an ASGI app. `upstream` is the HTTP client for the model server (a keep-alive pool sized to the
    concurrency limit when not given); timeouts and the key come from `settings` on every request."""
    # Idle connections are dropped before uvicorn's (so vLLM's and llama-cpp-python's) 5 s keep-alive closes them
    # from its side, which could race a request sent on them.
    client = upstream or httpx2.AsyncClient(
        limits=httpx2.Limits(max_connections=settings.max_concurrent_requests, keepalive_expiry=4)
    )
    metrics = GuardMetrics()
    guard = Guard(
        settings=settings,
        classifiers=Classifiers(input_classifier, output_classifier, settings, metrics),
        upstream=Upstream(client, settings),
        metrics=metrics,
        audit=AuditLog(settings.audit_log, settings.audit_max_bytes, settings.audit_backups),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await guard.classifiers.close()
        if upstream is None:
            await client.aclose()
        guard.audit.close()

    app = FastAPI(title="constitutional guard", lifespan=lifespan)
    app.state.guard = guard
    app.add_middleware(Admission, settings=settings, metrics=metrics)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _complete(guard, request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _complete(guard, request, "completions")

    @app.get("/v1/models")
    async def models() -> Response:
        try:
            response = await guard.upstream.open("GET", "/models")
            raw = await guard.upstream.read(response)
        except UpstreamFailure as failure:
            return guard.failed("models", failure, {})
        guard.metrics.requests.labels("models", "answered").inc()
        return Response(raw, status_code=response.status_code, media_type="application/json")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception) -> JSONResponse:
        log.exception("unexpected error serving %s", request.url.path)
        return JSONResponse(wire.error_body(f"guard error: {type(err).__name__}", "guard_error", 500), 500)

    return app


class RequestTooLarge(Exception):
    pass


async def _complete(guard: Guard, request: Request, endpoint: wire.Endpoint) -> Response:
    given = request.headers.get("x-request-id", "")
    request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
    headers = {"x-request-id": request_id}
    try:
        raw = await _body(request, guard.settings.max_request_bytes)
        exchange = wire.parse_request(endpoint, raw, request_id)
    except RequestTooLarge:
        guard.metrics.requests.labels(endpoint, "rejected").inc()
        return _too_large(guard.settings.max_request_bytes, headers)
    except wire.BadRequest as err:
        guard.metrics.requests.labels(endpoint, "rejected").inc()
        return JSONResponse(wire.error_body(str(err), "invalid_request_error"), 400, headers=headers)
    return await complete(guard, exchange)


async def _body(request: Request, limit: int) -> bytes:
    """The body, read no further than `limit` bytes (a chunked upload has no Content-Length to check first)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int, headers: dict[str, str] | None = None) -> JSONResponse:
    message = f"the request body is larger than the guard accepts ({limit} bytes, max_request_bytes)"
    return JSONResponse(wire.error_body(message, "invalid_request_error", "request_too_large"), 413, headers=headers)


class Admission:
    """Before any work on a `/v1/` request: the proxy's API key, the declared body size, and the concurrency limit
    (over it a request is refused with 429 at once rather than queued out of the client's sight)."""

    def __init__(self, app: ASGIApp, settings: GuardSettings, metrics: GuardMetrics):
        self.app, self.settings, self.metrics = app, settings, metrics
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            self.metrics.requests.labels(_endpoint(scope["path"]), "rejected").inc()
            await refusal(scope, receive, send)
            return
        self.in_flight += 1
        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.dec()

    def _refusal(self, scope: Scope) -> Response | None:
        headers = dict(scope["headers"])
        if self.settings.api_key is not None:
            given = headers.get(b"authorization", b"").decode("latin-1").removeprefix("Bearer ").strip()
            if not secrets.compare_digest(given.encode(), self.settings.api_key.get_secret_value().encode()):
                message = "missing or wrong API key: send `Authorization: Bearer <key>` (the guard's key)"
                return JSONResponse(wire.error_body(message, "authentication_error", "invalid_api_key"), 401)
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.settings.max_request_bytes:
            return _too_large(self.settings.max_request_bytes)
        if self.in_flight >= self.settings.max_concurrent_requests:
            message = f"the guard is serving its limit of {self.settings.max_concurrent_requests} requests; retry"
            return JSONResponse(
                wire.error_body(message, "rate_limit_error", "concurrency_limit"), 429, headers={"retry-after": "1"}
            )
        return None


def _endpoint(path: str) -> str:
    return {"/v1/chat/completions": "chat", "/v1/completions": "completions", "/v1/models": "models"}.get(
        path, "other"
    )
