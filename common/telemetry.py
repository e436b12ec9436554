"""Prometheus metric names and label sets: the one place for them (gateway and worker).

Base units, the ``whitebox_`` prefix, and no per-job labels."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
WAIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        kw: dict[str, Any] = {"registry": registry} if registry is not None else {}
        self.explanation_duration = Histogram(
            "whitebox_explanation_duration_seconds",
            "Compute time of one explanation, per sample",
            ["method", "model"],
            buckets=DURATION_BUCKETS,
            **kw,
        )
        self.queue_wait = Histogram(
            "whitebox_queue_wait_seconds",
            "Time a job waited in the queue before a worker took it",
            ["model"],
            buckets=WAIT_BUCKETS,
            **kw,
        )
        self.batch_size = Histogram(
            "whitebox_batch_size",
            "Jobs executed together in one batch",
            ["model"],
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64),
            **kw,
        )
        self.jobs = Counter("whitebox_jobs_total", "Jobs finished by a worker, by outcome", ["model", "outcome"], **kw)
        self.reclaimed = Counter("whitebox_jobs_reclaimed_total", "Jobs taken over from a dead worker", ["model"], **kw)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        kw: dict[str, Any] = {"registry": registry} if registry is not None else {}
        self.requests = Counter("whitebox_http_requests_total", "HTTP requests", ["route", "method", "status"], **kw)
        self.latency = Histogram(
            "whitebox_http_request_duration_seconds", "HTTP request latency", ["route"], buckets=WAIT_BUCKETS, **kw
        )
        self.queue_depth = Gauge("whitebox_queue_depth", "Jobs waiting or running, per model stream", ["model"], **kw)
        self.rejected = Counter(
            "whitebox_jobs_rejected_total", "Jobs refused before enqueue, by reason", ["reason"], **kw
        )
