"""A running guard: its settings and collaborators, and how it records what happened (metrics, audit log, the
client's error) so the completion flow and the stream relay report blocks and failures the same way."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from starlette.responses import JSONResponse, Response

from constitutional.classifiers.screening import Verdict
from constitutional.guard import wire
from constitutional.guard.audit import AuditLog
from constitutional.guard.classify import ClassifierError, Classifiers
from constitutional.guard.metrics import GuardMetrics
from constitutional.guard.settings import GuardSettings
from constitutional.guard.upstream import Upstream, UpstreamFailure

log = logging.getLogger("constitutional.guard")


@dataclass
class Guard:
    settings: GuardSettings
    classifiers: Classifiers
    upstream: Upstream
    metrics: GuardMetrics
    audit: AuditLog

    def headers(self, exchange: wire.Exchange) -> dict[str, str]:
        return {"x-request-id": exchange.request_id}

    def reason(self, exchange: wire.Exchange, stage: str, verdict: Verdict) -> dict[str, Any]:
        """What the client is told about a block. Never the score: it would help tune an attack to the threshold."""
        return {"stage": stage, "category": verdict.category or "unspecified", "request_id": exchange.request_id}

    def record_block(self, exchange: wire.Exchange, stage: str, verdict: Verdict, text: Any, **extra: Any) -> None:
        """Count the block and write its audit line (`text`, the screened conversations or answer, only if enabled)."""
        category = verdict.category or "unspecified"
        self.metrics.blocks.labels(stage, category).inc()
        self.metrics.requests.labels(exchange.endpoint, f"blocked_{stage}").inc()
        fields = {"request_id": exchange.request_id, "endpoint": exchange.endpoint, "model": exchange.model}
        fields.update(stage=stage, category=category, score=round(verdict.score, 6), **extra)
        if self.settings.log_text:
            fields["text"] = text
        self.audit.write("block", **fields)

    def classifier_failed(self, exchange: wire.Exchange, err: ClassifierError) -> Response | None:
        """Log a classifier failure; the 503 a fail-closed guard answers, None when it fails open."""
        action = "allowed" if self.settings.fail_open else "refused"
        log.error("request %s: %s; %s (fail_open=%s)", exchange.request_id, err, action, self.settings.fail_open)
        self.audit.write(
            "classifier_error", request_id=exchange.request_id, stage=err.stage, error=str(err), action=action
        )
        if self.settings.fail_open:
            return None
        self.metrics.requests.labels(exchange.endpoint, "error").inc()
        message = f"{err}; the guard fails closed, so nothing was answered (request {exchange.request_id})"
        return JSONResponse(
            wire.error_body(message, "guard_error", "classifier_unavailable"),
            status_code=503,
            headers=self.headers(exchange),
        )

    def failed(self, endpoint: str, failure: UpstreamFailure, headers: dict[str, str]) -> Response:
        """Count an upstream failure; the OpenAI-style error the client gets, with the status it calls for."""
        self.metrics.upstream_errors.labels(failure.kind).inc()
        self.metrics.requests.labels(endpoint, "error").inc()
        log.warning("upstream failure: %s", failure.message)
        kind = "rate_limit_error" if failure.status == 429 else "upstream_error"
        return JSONResponse(
            wire.error_body(failure.message, kind, failure.kind),
            status_code=failure.status,
            headers={**headers, **failure.headers},
        )
