"""The jobs of one model from one read of the queue: each is admitted (not cancelled, a model this
worker serves, not already finished by another worker, marked running), then the explain jobs run
together through the pipeline and each evaluate / compare job runs alone; every end goes through
``workers.serving.outcome``. A job that raises fails alone (its problem stored), never the worker
or the other jobs; only Redis being unreachable propagates (docs/robustness.md)."""

from __future__ import annotations

import time

import redis

from common.images import decode
from common.telemetry import WorkerMetrics
from schemas import queue as q
from schemas.api import Timings
from schemas.problems import CancelledProblem, Problem, WorkerFailure
from schemas.settings import Settings
from workers.models.loading import LoadedModel
from workers.serving.evaluation_jobs import run_job
from workers.serving.outcome import REDIS_DOWN, Delivery, Outcomes
from workers.serving.pipeline import Item, Limits, internal_error, run_batch
from workers.serving.reporter import JobReporter


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


class Executor:
    def __init__(self, r: redis.Redis, settings: Settings, metrics: WorkerMetrics, outcomes: Outcomes):
        self.r, self.settings, self.metrics, self.outcomes = r, settings, metrics, outcomes
        self.limits = Limits.of(settings)

    def run(self, model: LoadedModel | None, name: str, deliveries: list[Delivery]) -> None:
        """Every job of ``deliveries`` (all for model ``name``; ``model`` None: not served here) ends."""
        now = time.time()
        batch: list[tuple[Delivery, Item]] = []
        for d in deliveries:
            if not self._admit(model, name, d, now) or model is None:
                continue
            if isinstance(d.job, q.ExplainJob):
                item = self._item(d, d.job)
                if item is not None:
                    batch.append((d, item))
            else:
                self._run_single(model, d, d.job, now)
        if batch:
            self._run_explain(model, name, batch, now)

    def _admit(self, model: LoadedModel | None, name: str, d: Delivery, now: float) -> bool:
        if self.r.exists(q.cancel_key(d.job.id)):
            self.outcomes.fail(d, CancelledProblem("cancelled before it ran"))
            return False
        self.metrics.queue_wait.labels(name).observe(max(0.0, now - d.job.enqueued_at))
        if model is None:
            self.outcomes.fail(d, WorkerFailure(f"this worker does not serve model {name!r}"))
            return False
        return self.outcomes.start(d, now)

    def _item(self, d: Delivery, job: q.ExplainJob) -> Item | None:
        try:
            decoded = decode(job.request.image, self.limits.max_image_pixels, job.request.window(), job.request.frame)
        except Problem as e:
            self.outcomes.fail(d, e)
            return None
        except Exception as e:  # a decoder bug fails the job, not the worker
            self.outcomes.fail(d, internal_error(e))
            return None
        progress = JobReporter(self.r, job.id).progress()
        return Item(
            request=job.request,
            image=decoded.image,
            image_info=decoded.info,
            target_index=job.target_index,
            progress=progress,
        )

    def _run_explain(self, model: LoadedModel, name: str, batch: list[tuple[Delivery, Item]], now: float) -> None:
        items = [it for _, it in batch]
        self.metrics.batch_size.labels(name).observe(len(items))
        t0 = time.perf_counter()
        try:
            run_batch(model, items, limits=self.limits)
        except REDIS_DOWN:
            raise
        except Exception as e:  # run_batch isolates its items; this is a bug in that, not in a job
            error = internal_error(e)
            for it in items:
                it.error = it.error or error
        batch_ms = _ms(time.perf_counter() - t0)
        for d, it in batch:
            if it.result is None:
                self.outcomes.fail(d, it.error or WorkerFailure("no result"))
                continue
            for ex in it.result.explanations:
                self.metrics.explanation_duration.labels(ex.method, name).observe(ex.compute_ms / 1000)
            queue_ms = _ms(max(0.0, now - d.job.enqueued_at))
            timings = Timings(
                queue_ms=queue_ms, compute_ms=round(it.compute_ms, 3), batch_ms=batch_ms, batch_size=len(items)
            )
            self.outcomes.done(d, it.result.response(d.job.id, timings))

    def _run_single(self, model: LoadedModel, d: Delivery, job: q.EvaluateJob | q.CompareJob, now: float) -> None:
        """An evaluate / compare job: alone, with progress and cancellation."""
        try:
            response = run_job(model, job, self.limits, JobReporter(self.r, job.id).progress())
        except REDIS_DOWN:
            raise
        except Problem as e:
            self.outcomes.fail(d, e)
            return
        except Exception as e:  # a bug must fail the job, not the worker
            self.outcomes.fail(d, internal_error(e))
            return
        response.timings.queue_ms = _ms(max(0.0, now - job.enqueued_at))
        self.outcomes.done(d, response)
