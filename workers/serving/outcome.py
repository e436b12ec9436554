"""How a job ends, whatever the end (docs/architecture.md, "The path of one request", step 5): its
``JobResult`` stored, its id published, the ``whitebox_jobs_total`` counter bumped, and its stream
entry acknowledged and deleted. :meth:`Outcomes.finish` is the one place that does it.

Exactly once: storing and publishing is a compare-and-set done in Redis (one Lua script): only the
first finisher of a job (its hash has no ``finished`` field and no result is stored) writes; a later
one, a reclaimed copy that also finished, only acknowledges its entry and counts ``duplicate``. A
result over ``max_result_bytes`` is replaced by a 413 problem, and a result Redis refuses to store
(out of memory, a limit) by a 5xx problem: such a job fails on its first delivery, never the worker
(docs/robustness.md)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import redis
from pydantic import BaseModel
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from common.telemetry import WorkerMetrics
from schemas import queue as q
from schemas.problems import PayloadTooLarge, Problem, Unavailable, WorkerFailure
from schemas.queue import JobResult
from schemas.status import JobStatus

log = logging.getLogger("whitebox.worker")

Job = q.ExplainJob | q.EvaluateJob | q.CompareJob

# Redis unreachable: no job's fault, so no job fails of it; the jobs stay pending and are delivered again
REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)

# KEYS: job hash, result key, stream. ARGV: result JSON, TTL, status, finished time, progress ('' to keep),
# events channel, job id, group, entry id. Returns 1 when this call stored the result, 0 for a duplicate.
# The result is the first write: when Redis refuses it (OOM) nothing was written and nothing acknowledged.
FINISH_SCRIPT = """
local fresh = redis.call('HEXISTS', KEYS[1], 'finished') == 0 and redis.call('EXISTS', KEYS[2]) == 0
if fresh then
  redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
  redis.call('HSET', KEYS[1], 'status', ARGV[3], 'finished', ARGV[4])
  if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'progress', ARGV[5]) end
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  redis.call('PUBLISH', ARGV[6], ARGV[7])
end
redis.call('XACK', KEYS[3], ARGV[8], ARGV[9])
redis.call('XDEL', KEYS[3], ARGV[9])
if fresh then return 1 end
return 0
"""

# KEYS: job hash, result key. ARGV: status, start time. Returns 0 when the job was already finished.
START_SCRIPT = """
if redis.call('HEXISTS', KEYS[1], 'finished') == 1 or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'started', ARGV[2])
return 1
"""

# Redis frees a refused command's query buffer within a few cron ticks: a small write is retried that long
OOM_RETRY = Retry(ExponentialBackoff(cap=0.5, base=0.05), 6, supported_errors=(redis.ResponseError,))


@dataclass(frozen=True)
class Entry:
    """One stream entry as read: its stream, its id and its raw fields."""

    stream: str
    mid: str
    fields: dict[str, Any]


@dataclass(frozen=True)
class Delivery:
    """A stream entry and the job message it carries."""

    entry: Entry
    job: Job


def problem_status(p: Problem) -> JobStatus:
    """A cancellation (409) ends a job as cancelled, any other problem as failed."""
    return JobStatus.cancelled if p.status == 409 else JobStatus.failed


def _failed(p: Problem) -> JobResult:
    return JobResult(status=problem_status(p), problem=p.details())


def _is_oom(e: Exception) -> bool:
    return isinstance(e, redis.OutOfMemoryError) or "OOM" in str(e)


def too_large(size: int, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"result of {size} bytes is over the limit of {limit} bytes; ask for fewer methods/outputs or a smaller image"
    )


def not_stored(size: int, e: redis.ResponseError) -> Problem:
    """The problem stored instead of a result Redis refused (no Redis text: it may name internals)."""
    if _is_oom(e):
        return Unavailable(
            f"the result of {size} bytes could not be stored: the job store is out of memory; retry later"
        )
    return WorkerFailure(f"the result of {size} bytes could not be stored: the job store refused the write")


class Outcomes:
    def __init__(self, r: redis.Redis, metrics: WorkerMetrics, result_ttl_s: int, max_result_bytes: int):
        self.r, self.metrics, self.ttl, self.max_bytes = r, metrics, result_ttl_s, max_result_bytes
        self._finish = r.register_script(FINISH_SCRIPT)
        self._start = r.register_script(START_SCRIPT)

    def start(self, d: Delivery, now: float) -> bool:
        """Mark the job running, unless a worker already finished it (a reclaimed copy of a finished
        job): then its entry is acknowledged, counted ``duplicate``, and False returned."""
        job = d.job
        try:
            fresh = self._start(keys=[q.job_key(job.id), q.result_key(job.id)], args=[JobStatus.running.value, now])
        except redis.ResponseError as e:  # the status is informative: a refused write does not stop the job
            log.warning("could not mark job %s running: %s", job.id, type(e).__name__)
            return True
        if not fresh:
            self.finish(d.entry, None, None)
            self.metrics.jobs.labels(job.model, "duplicate").inc()
        return bool(fresh)

    def finish(self, entry: Entry, job: Job | None, result: JobResult | None, outcome: str | None = None) -> bool:
        """Store ``result`` for ``job`` unless the job was already finished, announce it, then acknowledge
        and delete ``entry``, in one atomic step; count the outcome (``outcome``, the result's status, or
        ``duplicate``). Without a job (an entry that carries none) only the acknowledgement is left.
        Returns whether this call stored the result."""
        if job is None or result is None:
            p = self.r.pipeline()
            p.xack(entry.stream, q.GROUP, entry.mid)
            p.xdel(entry.stream, entry.mid)
            p.execute()
            return False
        body = result.model_dump_json(exclude_none=True).encode()
        if len(body) > self.max_bytes:
            log.warning("job %s: result of %d bytes over the limit of %d", job.id, len(body), self.max_bytes)
            result = _failed(too_large(len(body), self.max_bytes))
            body = result.model_dump_json(exclude_none=True).encode()
        end = self._store_or_fail(entry, job, result, body)
        if end is None:
            return False
        stored, result = end
        label = (outcome or result.status.value) if stored else "duplicate"
        self.metrics.jobs.labels(job.model, label).inc()
        return stored

    def _store_or_fail(self, entry: Entry, job: Job, result: JobResult, body: bytes) -> tuple[bool, JobResult] | None:
        """The compare-and-set: whether it stored, and what. A result Redis refuses is replaced by the
        problem that says so (retried while Redis is out of memory). None: nothing could be stored (out
        of memory: the entry stays pending and is delivered again; any other refusal: it is dropped)."""
        try:
            return self._store(entry, job, result, body), result
        except redis.ResponseError as e:
            log.error("job %s: Redis refused its result of %d bytes (%s)", job.id, len(body), type(e).__name__)
            err = e
        if result.status == JobStatus.done:
            result = _failed(not_stored(len(body), err))
        small = result.model_dump_json(exclude_none=True).encode()
        try:
            stored = OOM_RETRY.call_with_retry(
                lambda: self._store(entry, job, result, small), lambda _e: None, is_retryable=_is_oom
            )
            return stored, result
        except redis.ResponseError as e:
            if _is_oom(e):
                log.error("job %s: no result stored (Redis out of memory); left for redelivery", job.id)
            else:
                log.error("job %s: no result stored (%s); its entry is dropped", job.id, type(e).__name__)
                self.finish(entry, None, None)
            return None

    def _store(self, entry: Entry, job: Job, result: JobResult, body: bytes) -> bool:
        progress = "1" if result.status == JobStatus.done else ""
        keys = [q.job_key(job.id), q.result_key(job.id), entry.stream]
        args = [body, self.ttl, result.status.value, f"{time.time():.6f}", progress]
        args += [q.EVENTS_CHANNEL, job.id, q.GROUP, entry.mid]
        return bool(self._finish(keys=keys, args=args))

    def done(self, d: Delivery, response: BaseModel) -> bool:
        return self.finish(
            d.entry, d.job, JobResult(status=JobStatus.done, response=response.model_dump(exclude_none=True))
        )

    def fail(self, d: Delivery, problem: Problem, outcome: str | None = None) -> bool:
        return self.finish(d.entry, d.job, _failed(problem), outcome)

    def drop(self, entry: Entry) -> None:
        """An entry that carries no job (malformed): it can never succeed."""
        self.finish(entry, None, None)
