"""How a job ends, whatever the end (docs/architecture.md, "The path of one request", step 5): its
``JobResult`` stored, the ``whitebox_jobs_total`` counter bumped, its id published, and only then
its stream entry acknowledged and deleted. :meth:`Outcomes.finish` is the one place that does it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis
from pydantic import BaseModel

from common.telemetry import WorkerMetrics
from schemas import queue as q
from schemas.problems import Problem
from schemas.queue import JobResult
from schemas.status import JobStatus

Job = q.ExplainJob | q.EvaluateJob | q.CompareJob


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


class Outcomes:
    def __init__(self, r: redis.Redis, metrics: WorkerMetrics, result_ttl_s: int):
        self.r, self.metrics, self.ttl = r, metrics, result_ttl_s

    def finish(self, entry: Entry, job: Job | None, result: JobResult | None, outcome: str | None = None) -> None:
        """Store ``result`` for ``job`` (the counter's outcome: ``outcome`` or the result's status),
        announce it, then acknowledge and delete ``entry``, in one transaction. Without a job (an
        entry that carries none) only the acknowledgement is left."""
        p = self.r.pipeline()
        if job is not None and result is not None:
            fields = {"status": result.status.value, "finished": f"{time.time():.6f}"}
            if result.status == JobStatus.done:
                fields["progress"] = "1"
            p.set(q.result_key(job.id), result.model_dump_json(exclude_none=True), ex=self.ttl)
            p.hset(q.job_key(job.id), mapping=fields)
            p.expire(q.job_key(job.id), self.ttl)
            p.publish(q.EVENTS_CHANNEL, job.id)
        p.xack(entry.stream, q.GROUP, entry.mid)
        p.xdel(entry.stream, entry.mid)
        p.execute()
        if job is not None and result is not None:
            self.metrics.jobs.labels(job.model, outcome or result.status.value).inc()

    def done(self, d: Delivery, response: BaseModel) -> None:
        self.finish(d.entry, d.job, JobResult(status=JobStatus.done, response=response.model_dump(exclude_none=True)))

    def fail(self, d: Delivery, problem: Problem, outcome: str | None = None) -> None:
        result = JobResult(status=problem_status(problem), problem=problem.details())
        self.finish(d.entry, d.job, result, outcome)

    def drop(self, entry: Entry) -> None:
        """An entry that carries no job (malformed): it can never succeed."""
        self.finish(entry, None, None)
