"""Prometheus metrics of the scoring service, in a registry of its own (several apps in one process, as in the
tests, keep separate counts; nothing leaks into the global default registry).

    lm_serve_requests_total{endpoint, status}      requests answered, by endpoint and HTTP status
    lm_serve_request_seconds{endpoint}              latency histogram (request in -> response out)
    lm_serve_batch_size                             texts per forward pass (histogram)
    lm_serve_queue_depth                            texts waiting to be scored (gauge)
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "lm_serve_requests",
            "Requests answered, by endpoint and HTTP status",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "lm_serve_request_seconds",
            "Request latency in seconds",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "lm_serve_batch_size", "Texts per forward pass", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.queue_depth = Gauge("lm_serve_queue_depth", "Texts waiting to be scored", registry=self.registry)

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()
        self.latency.labels(endpoint=endpoint).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
