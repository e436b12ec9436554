"""The worker's queue loop, a thin loop around the explainer library (docs/architecture.md,
"The path of one request", step 3).

Reads up to ``max_batch_size`` jobs in one XREADGROUP (waiting at most ``max_queue_delay`` to fill
the batch), runs them (``workers.serving.execute``), and each job ends through
``workers.serving.outcome``: result stored with a TTL, id published, and only then the stream entry
acknowledged and deleted. The heartbeat (``workers.serving.heartbeat``) re-claims the jobs this
worker holds, so only the jobs of a dead worker grow idle; those are taken over with XAUTOCLAIM, and
a job delivered more than ``max_deliveries`` times goes to the dead-letter stream with a failed
result for its client.

Redis outages (docs/robustness.md): every client has bounded timeouts and redis-py's ``Retry``
with exponential backoff. The loop outlives an outage: one log line, a wait for Redis with backoff,
then the consumer groups re-created (a restarted Redis without persistence lost the streams) and the
heartbeat and model cards published at once. The outcomes of a job computed during an outage are
stored through a client that retries longer (``OUTCOME_RETRIES``); a job whose outcome could not be
stored stays pending and is re-delivered.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

import redis
import torch
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from common.telemetry import WorkerMetrics
from schemas import queue as q
from schemas.problems import WorkerFailure
from schemas.registry import Registry, load_registry
from schemas.settings import Settings
from workers.explain import applicability
from workers.models.loading import LoadedModel, load_model
from workers.serving.consumers import remove_dead_consumers
from workers.serving.execute import Executor
from workers.serving.heartbeat import Heartbeat, HeldJobs
from workers.serving.outcome import Delivery, Entry, Job, Outcomes

log = logging.getLogger("whitebox.worker")
BLOCK_MS = 1000  # XREADGROUP's BLOCK; the loop's read timeout is redis_timeout_s on top of it
BACKOFF = ExponentialBackoff(cap=0.5, base=0.05)  # between tries of one call, and while Redis is down
OUTCOME_RETRIES = 40  # about 20 s of a refused Redis (more when it hangs) before an outcome gives up
REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)


def connect(settings: Settings, retries: int = 3, extra_timeout_s: float = 0.0) -> redis.Redis:
    """A Redis client with bounded connect/read timeouts and Retry with exponential backoff (on a
    refused or dropped connection, and on a timeout)."""
    assert settings.redis_url
    return redis.Redis.from_url(
        settings.redis_url,
        decode_responses=True,
        health_check_interval=30,
        socket_timeout=settings.redis_timeout_s + extra_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        retry=Retry(BACKOFF, retries, supported_errors=REDIS_DOWN),
    )


def cpu_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


class Worker:
    def __init__(
        self,
        settings: Settings,
        registry: Registry | None = None,
        models: list[str] | None = None,
        consumer: str | None = None,
    ):
        if not settings.redis_url:
            raise SystemExit("REDIS_URL is not set (the all-in-one `whitebox serve` starts an embedded Redis)")
        self.settings = settings
        self.registry = registry or load_registry(settings.models_path)
        self.model_names = models or list(settings.worker_models) or [m.name for m in self.registry.models]
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.r = connect(settings, extra_timeout_s=BLOCK_MS / 1000)
        self.metrics = WorkerMetrics()
        self.models: dict[str, LoadedModel] = {}
        self.cards: dict[str, dict[str, Any]] = {}
        self.held = HeldJobs()
        # a computed job's outcome outlives a short outage: its own client, retried for longer
        self.outcomes = Outcomes(
            connect(settings, OUTCOME_RETRIES), self.metrics, settings.result_ttl_s, settings.max_result_bytes
        )
        self.executor = Executor(self.r, settings, self.metrics, self.outcomes)
        # the heartbeat thread has its own connection
        self.heartbeat = Heartbeat(connect(settings, retries=1), self.consumer, self.cards, self.held)
        self._stop = threading.Event()
        self._last_claim = 0.0
        self._full = 0  # steps that met an out-of-memory Redis in a row

    # ---- start-up ------------------------------------------------------------------
    def load(self) -> None:
        torch.set_num_threads(self.settings.worker_threads or cpu_threads())
        for name in self.model_names:
            entry = self.registry.get(name)
            if entry is None:
                raise SystemExit(f"model {name!r} is not in the registry")
            t0 = time.perf_counter()
            m = load_model(entry, self.registry)
            self.models[name] = m
            self.cards[name] = m.card(applicability(m))
            log.info("loaded %s in %.2fs", name, time.perf_counter() - t0)

    def join(self) -> None:
        """The consumer groups of our streams (created when missing), then the heartbeat and cards."""
        for name in self.models:
            try:
                self.r.xgroup_create(q.stream_key(name), q.GROUP, id="0", mkstream=True)
            except redis.ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise
        self.heartbeat.publish()

    # ---- reading -------------------------------------------------------------------
    def read_batch(self, block_ms: int = BLOCK_MS) -> list[Entry]:
        """Up to max_batch_size new entries: one blocking read, then (with a queue delay) polls."""
        streams = {q.stream_key(n): ">" for n in self.models}
        size = self.settings.max_batch_size
        got = self._xread(streams, size, block_ms)
        if got and len(got) < size and self.settings.max_queue_delay_ms > 0:
            # Poll without BLOCK: Redis times blocked clients out at its `hz` tick (100 ms by
            # default), so a BLOCK of a few ms would hold the batch for up to 100 ms.
            deadline = time.monotonic() + self.settings.max_queue_delay_ms / 1000
            while len(got) < size:
                more = self._xread(streams, size - len(got), None)
                if more:
                    got += more
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                time.sleep(min(0.001, left))
        return got

    def _xread(self, streams: dict[str, str], count: int, block_ms: int | None) -> list[Entry]:
        block = None if block_ms is None else max(block_ms, 1)
        res = self.r.xreadgroup(q.GROUP, self.consumer, streams, count=count, block=block)
        return [Entry(stream, mid, fields) for stream, entries in (res or []) for mid, fields in entries if fields]

    def reclaim(self) -> list[Entry]:
        """Take over jobs idle longer than claim_idle_ms (their worker stopped heart-beating them)."""
        return [e for name in self.models for e in self._reclaim_stream(name)]

    def _reclaim_stream(self, name: str) -> list[Entry]:
        stream = q.stream_key(name)
        s = self.settings
        res = self.r.xautoclaim(
            stream, q.GROUP, self.consumer, min_idle_time=s.claim_idle_ms, start_id="0-0", count=s.max_batch_size
        )
        out = []
        for mid, fields in res[1]:  # Redis 6.2 answers [cursor, entries]; 7.x adds the deleted ids
            entry = Entry(stream, mid, fields)
            if not fields:  # deleted meanwhile: nothing left to do but acknowledge
                self.outcomes.drop(entry)
                continue
            info = self.r.xpending_range(stream, q.GROUP, min=mid, max=mid, count=1)
            deliveries = info[0]["times_delivered"] if info else 1
            self.metrics.reclaimed.labels(name).inc()
            if deliveries > s.max_deliveries:
                self.dead_letter(entry, deliveries)
            else:
                log.warning("reclaimed %s from %s (delivery %d)", mid, stream, deliveries)
                out.append(entry)
        remove_dead_consumers(self.r, stream, s.claim_idle_ms, self.consumer)
        return out

    def dead_letter(self, entry: Entry, deliveries: int) -> None:
        """A job that was delivered too often: to the dead-letter stream, with a failed result."""
        self.r.xadd(q.DEAD_LETTER_STREAM, {**entry.fields, "stream": entry.stream, "deliveries": str(deliveries)})
        job = self._decode(entry)
        if job is None:
            self.outcomes.drop(entry)
            return
        problem = WorkerFailure(
            f"the job was delivered {deliveries} times without completing "
            f"(a worker crashed on it); it was moved to the dead-letter stream"
        )
        self.outcomes.fail(Delivery(entry, job), problem, outcome="dead")

    @staticmethod
    def _decode(entry: Entry) -> Job | None:
        try:
            return q.decode_job(entry.fields)
        except Exception as e:  # a malformed entry can never succeed
            log.error("dropping malformed entry %s: %s", entry.mid, e)
            return None

    # ---- the loop ------------------------------------------------------------------
    def process(self, batch: list[Entry]) -> None:
        """Every entry of ``batch`` ends: malformed ones dropped, the jobs run model by model."""
        by_model: dict[str, list[Delivery]] = {}
        for entry in batch:
            job = self._decode(entry)
            if job is None:
                self.outcomes.drop(entry)
                continue
            by_model.setdefault(job.model, []).append(Delivery(entry, job))
        for name, deliveries in by_model.items():
            with self.held.holding([d.entry for d in deliveries]):
                self.executor.run(self.models.get(name), name, deliveries)

    def _next_batch(self) -> list[Entry]:
        batch = []
        if time.monotonic() - self._last_claim > max(self.settings.claim_idle_ms / 2000, 0.2):
            self._last_claim = time.monotonic()
            batch = self.reclaim()
        return batch or self.read_batch()

    def run(self) -> None:
        self.load()
        try:
            self.join()
        except REDIS_DOWN as e:  # not up yet (or down): wait for it rather than exit
            self.wait_for_redis(e)
        self.heartbeat.start(self._stop)
        log.info("worker %s serving %s", self.consumer, ", ".join(self.models))
        try:
            while not self._stop.is_set():
                self.step()
        finally:
            self._stop.set()
            try:
                self.r.delete(q.worker_key(self.consumer))
            except redis.RedisError:
                pass

    def step(self) -> None:
        """One batch; an outage or a Redis that came back empty is waited out and the worker re-joins."""
        try:
            batch = self._next_batch()
            if batch:
                self.process(batch)
            self._full = 0
        except REDIS_DOWN as e:
            self.wait_for_redis(e)
        except redis.exceptions.OutOfMemoryError:  # writes refused at maxmemory: the jobs in hand stay pending
            self._full += 1
            if self._full == 1:
                log.warning("Redis is out of memory (maxmemory); waiting for room")
            self._stop.wait(BACKOFF.compute(self._full))
            return
        except redis.ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            log.warning("the consumer groups are gone (Redis restarted empty?): re-creating them")
            self.rejoin()

    def wait_for_redis(self, error: Exception) -> None:
        """One line per outage, then a ping with exponential backoff until Redis answers (or we stop)."""
        log.warning("lost Redis (%s); the jobs in hand stay pending; waiting for it", type(error).__name__)
        t0, failures = time.monotonic(), 0
        while not self._stop.is_set():
            try:
                self.r.ping()
                break
            except redis.RedisError:  # LOADING included (a BusyLoadingError is a ConnectionError)
                failures += 1
                self._stop.wait(BACKOFF.compute(failures))
        if not self._stop.is_set():
            log.warning("Redis is back after %.1f s", time.monotonic() - t0)
            self.rejoin()

    def rejoin(self) -> None:
        """Groups, heartbeat and cards again; a Redis that fails meanwhile is waited out by the next step."""
        try:
            self.join()
            self._last_claim = 0.0  # reclaim at once what is left over from the outage
        except REDIS_DOWN:
            pass

    def stop(self, *_args: object) -> None:
        self._stop.set()
