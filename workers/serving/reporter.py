"""Progress and cancellation of one job, as the explainer library sees them (``Progress``)."""

from __future__ import annotations

import contextlib
import time

import redis

from schemas import queue as q
from workers.explain.base import Progress


class JobReporter:
    """Progress and cancellation of one job, throttled to a few Redis calls per second."""

    def __init__(self, r: redis.Redis, job_id: str, every_s: float = 0.25):
        self.r, self.id, self.every = r, job_id, every_s
        self._last_report = 0.0
        self._last_check = 0.0
        self._cancelled = False

    def report(self, fraction: float) -> None:
        now = time.monotonic()
        if now - self._last_report >= self.every or fraction >= 1.0:
            self._last_report = now
            with contextlib.suppress(redis.RedisError):  # best effort: an outage must not fail the job
                self.r.hset(q.job_key(self.id), "progress", f"{fraction:.4f}")

    def cancelled(self) -> bool:
        now = time.monotonic()
        if not self._cancelled and now - self._last_check >= self.every:
            self._last_check = now
            with contextlib.suppress(redis.RedisError):  # Redis down: not cancelled as far as we know
                self._cancelled = bool(self.r.exists(q.cancel_key(self.id)))
        return self._cancelled

    def progress(self) -> Progress:
        return Progress(self.report, self.cancelled)
