"""The gateway's side of the queue protocol (``schemas.queue``): enqueue a typed job with backpressure,
wait for its :class:`JobResult` (one pub/sub listener for every waiting request, polling as a backstop),
read and cancel a job, read the model cards and the live workers (docs/architecture.md).

Redis outages (docs/robustness.md): every call is bounded by ``redis_timeout_s``; a refused or
dropped connection is retried a few times with exponential backoff (a stale pooled connection after a
Redis restart gets a fresh one); what still fails raises redis' ConnectionError/TimeoutError, which the
gateway answers 503 + Retry-After (``service.problems.on_redis_down``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any, cast

import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT, FieldT

from common.telemetry import GatewayMetrics
from schemas import queue as q
from schemas.problems import Overloaded, Unavailable, WorkerFailure
from schemas.settings import Settings
from schemas.status import JobStatus

log = logging.getLogger("whitebox.gateway")
Job = q.ExplainJob | q.EvaluateJob | q.CompareJob
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError)
# a refused or dropped connection: 3 more tries after 0.1, 0.2, 0.25 s; a timeout is not retried, so a
# route answers within about redis_timeout_s while Redis hangs
RETRIES = 3
BACKOFF = ExponentialBackoff(cap=0.25, base=0.05)
LISTENER_BACKOFF = ExponentialBackoff(cap=1.0, base=0.05)
# after an outage, a job missing this long is lost (a worker that computed it stores it within about 1 s)
LOST_AFTER_S = 3.0


def connect(settings: Settings, max_connections: int = 512) -> aioredis.Redis:
    """The gateway's Redis client: bounded connect/read timeouts, Retry with exponential backoff."""
    assert settings.redis_url
    return aioredis.from_url(
        settings.redis_url,
        decode_responses=True,
        max_connections=max_connections,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        retry=Retry(BACKOFF, RETRIES, supported_errors=(RedisConnectionError,)),
        health_check_interval=30,
    )


class QueueClient:
    def __init__(self, settings: Settings, metrics: GatewayMetrics):
        self.settings = settings
        self.metrics = metrics
        self._redis: aioredis.Redis | None = None
        self._waiters: dict[str, asyncio.Future[bool]] = {}
        self._listener: asyncio.Task[None] | None = None

    @property
    def redis(self) -> aioredis.Redis:
        if self._redis is None:
            raise RuntimeError("the queue client is not started")
        return self._redis

    async def start(self) -> None:
        if not self.settings.redis_url:
            raise RuntimeError("REDIS_URL is not set (the all-in-one `whitebox serve` starts an embedded Redis)")
        self._redis = connect(self.settings)
        self._listener = asyncio.create_task(self._listen())

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
        if self._redis is not None:
            await self._redis.aclose()

    async def _listen(self) -> None:
        """One pub/sub connection resolves every waiting request; polling covers lost messages. It
        reconnects with exponential backoff (one log line per outage)."""
        failures = 0
        while True:
            ps = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await ps.subscribe(q.EVENTS_CHANNEL)
                if failures:
                    log.warning("event listener: Redis is back after %d failed attempts", failures)
                failures = 0
                async for msg in ps.listen():
                    fut = self._waiters.get(msg.get("data"))
                    if fut is not None and not fut.done():
                        fut.set_result(True)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # reconnect after a Redis hiccup
                if not failures:
                    log.warning("event listener lost Redis (%s); reconnecting", type(e).__name__)
                failures += 1
                await asyncio.sleep(LISTENER_BACKOFF.compute(failures))
            finally:
                with contextlib.suppress(Exception):
                    await ps.aclose()  # type: ignore[no-untyped-call]

    # ---- jobs ---------------------------------------------------------------------------
    async def enqueue(self, job: Job) -> str:
        """Put ``job`` on its model's stream with its job hash; 503 + Retry-After when the stream is full."""
        (job_id,) = await self.enqueue_many([job])
        return job_id

    async def enqueue_many(self, jobs: Sequence[Job]) -> list[str]:
        """All ``jobs`` or none: room is checked on every stream for all its jobs first (depth + n <=
        max_queue_depth, else 503 + Retry-After and nothing queued), then one pipeline writes them."""
        limit = self.settings.max_queue_depth
        for model, n in Counter(job.model for job in jobs).items():
            depth = await self.depth(model)
            if depth + n > limit:
                self.metrics.rejected.labels("queue_full").inc()
                adds = f" and this request adds {n}" if n > 1 else ""
                raise Overloaded(
                    f"{depth} jobs are queued for {model!r}{adds} (limit {limit}); retry later",
                    headers={"Retry-After": "1"},
                )
        encoded = await asyncio.to_thread(lambda: [q.encode_job(job) for job in jobs])  # MBs of images: off the loop
        p = self.redis.pipeline(transaction=False)
        for job, fields in zip(jobs, encoded):
            state: dict[FieldT, EncodableT] = {
                "status": JobStatus.queued.value,
                "progress": "0",
                "model": job.model,
                "kind": job.kind,
                "created": f"{job.enqueued_at:.6f}",
            }
            p.hset(q.job_key(job.id), mapping=state)
            p.expire(q.job_key(job.id), self.settings.result_ttl_s)
            p.xadd(q.stream_key(job.model), fields)  # type: ignore[arg-type]  # redis' stub: a wider dict
        await p.execute()
        return [job.id for job in jobs]

    async def forget_results(self, job_ids: Sequence[str]) -> None:
        """Delete the stored results a synchronous client now has (bounded storage); the job hashes stay
        until their TTL (they mark the jobs finished for the workers' exactly-once check)."""
        if job_ids:
            await self.redis.delete(*(q.result_key(j) for j in job_ids))

    async def result(self, job_id: str) -> q.JobResult | None:
        raw = await self.redis.get(q.result_key(job_id))
        if not raw:
            return None
        try:
            return q.JobResult.model_validate_json(raw)
        except ValidationError as e:
            raise WorkerFailure(f"the stored result of job {job_id} is malformed: {e.error_count()} errors") from e

    async def wait(self, job_id: str, timeout: float) -> q.JobResult | None:
        """The job's result once stored, or None after ``timeout`` seconds. It waits through a Redis
        outage; the last Redis error when Redis is still down at the deadline (503), and a 503 when
        Redis came back without the job (a restart without persistence lost it)."""
        fut = self._waiters.setdefault(job_id, asyncio.get_running_loop().create_future())
        deadline = time.monotonic() + timeout
        outage: Exception | None = None
        back: float | None = None  # when Redis answered again after an outage
        try:
            while True:
                try:
                    res = await self.result(job_id)
                    if res is None and (outage or back) and not await self.redis.exists(q.job_key(job_id)):
                        back = back or time.monotonic()
                        if time.monotonic() - back >= LOST_AFTER_S:
                            raise Unavailable(
                                "the job queue restarted and lost the job; send the request again",
                                headers={"Retry-After": str(self.settings.retry_after_s)},
                            )
                    else:
                        back = None
                    outage = None
                except REDIS_DOWN as e:
                    outage, res = e, None
                if res is not None:
                    return res
                left = deadline - time.monotonic()
                if left <= 0:
                    if outage is not None:
                        raise outage
                    return None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(fut), min(left, 1.0))
        finally:
            self._waiters.pop(job_id, None)

    async def job_hash(self, job_id: str) -> dict[str, str]:
        """The ``job:{id}`` hash (status, progress, model, kind, created, finished...); empty when unknown."""
        h = await self.redis.hgetall(q.job_key(job_id))
        return cast(dict[str, str], h)  # decode_responses: str keys and values

    async def cancel(self, job_id: str, reason: str, mark_cancelled: bool = False) -> None:
        """Ask the worker to stop the job (``cancel:{id}``); a job no worker took yet is cancelled at once."""
        p = self.redis.pipeline(transaction=False)
        p.set(q.cancel_key(job_id), reason, ex=self.settings.result_ttl_s)
        if mark_cancelled:
            p.hset(q.job_key(job_id), "status", JobStatus.cancelled.value)
        await p.execute()

    # ---- models and workers -------------------------------------------------------------
    async def depth(self, model: str) -> int:
        depth = int(await self.redis.xlen(q.stream_key(model)))
        self.metrics.queue_depth.labels(model).set(depth)
        return depth

    async def card(self, model: str) -> dict[str, Any] | None:
        """The model card a worker published (``model:{name}``), None before any did."""
        raw = await self.redis.get(q.model_key(model))
        return json.loads(raw) if raw else None

    async def live_models(self) -> set[str]:
        """The models served by a worker whose heartbeat is alive."""
        models: set[str] = set()
        async for key in self.redis.scan_iter(match=q.WORKER_PATTERN, count=100):
            raw = await self.redis.get(key)
            if raw:
                models.update(json.loads(raw).get("models", []))
        return models

    async def ping(self) -> None:
        await self.redis.ping()
