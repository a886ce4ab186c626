"""The guard's Prometheus metrics, in a registry of its own per app (so tests and benchmarks can build many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Classifier calls range from well under a millisecond (one pushed token) to seconds (a large input batch on CPU).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class GuardMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "cai_guard_requests",
            "Requests by endpoint and outcome (answered, blocked_input, blocked_output, error, rejected).",
            ["endpoint", "outcome"],
            registry=self.registry,
        )
        self.blocks = Counter(
            "cai_guard_blocks", "Blocked requests and halted answers.", ["stage", "category"], registry=self.registry
        )
        self.classifier_seconds = Histogram(
            "cai_guard_classifier_seconds",
            "Time of one classifier call (an input batch, or the pieces of one upstream read).",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.input_batch = Histogram(
            "cai_guard_input_batch_size",
            "Conversations per input-classifier call.",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
        self.classifier_errors = Counter(
            "cai_guard_classifier_errors", "Classifier calls that raised.", ["stage"], registry=self.registry
        )
        self.upstream_errors = Counter(
            "cai_guard_upstream_errors",
            "Upstream failures: connect, timeout, broken stream, or the status it answered.",
            ["kind"],
            registry=self.registry,
        )
        self.in_flight = Gauge("cai_guard_requests_in_flight", "Requests being served.", registry=self.registry)
