"""The worker process: a thin loop around the explainer library.

Reads up to ``max_batch_size`` jobs in one XREADGROUP (waiting at most
``max_queue_delay`` to fill the batch), runs them through workers.serving.pipeline,
stores each result with a TTL, publishes its id, and only then acknowledges
(and deletes) the stream entry. A heartbeat thread keeps the worker's liveness
key fresh and re-claims the jobs it holds (XCLAIM to itself resets their idle
time), so only the jobs of a dead worker grow idle; those are taken over with
XAUTOCLAIM, and a job delivered more than ``max_deliveries`` times goes to the
dead-letter stream with a failed result for its client.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
import traceback

import redis

from common.images import decode_image
from common.telemetry import WorkerMetrics
from schemas import queue as q
from schemas.problems import CancelledProblem, Problem, WorkerFailure
from schemas.registry import Registry, load_registry
from schemas.settings import Settings
from workers.explain import applicability
from workers.explain.base import Progress
from workers.models.loading import LoadedModel, load_model
from workers.serving.evaluation_jobs import RUNNERS
from workers.serving.pipeline import Item, run_batch

log = logging.getLogger("whitebox.worker")


def cpu_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


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
            self.r.hset(q.job_key(self.id), "progress", f"{fraction:.4f}")

    def cancelled(self) -> bool:
        now = time.monotonic()
        if not self._cancelled and now - self._last_check >= self.every:
            self._last_check = now
            self._cancelled = bool(self.r.exists(q.cancel_key(self.id)))
        return self._cancelled

    def progress(self) -> Progress:
        return Progress(self.report, self.cancelled)


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
        self.model_names = models or [m.name for m in self.registry.models]
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.r = redis.Redis.from_url(settings.redis_url, decode_responses=True, health_check_interval=30)
        self.metrics = WorkerMetrics()
        self.models: dict[str, LoadedModel] = {}
        self.cards: dict[str, dict] = {}
        self.held: dict[str, set[str]] = {}  # stream -> ids being processed
        self._held_lock = threading.Lock()
        self._stop = threading.Event()
        self._last_claim = 0.0

    # ---- start-up ------------------------------------------------------------------
    def load(self) -> None:
        import torch

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
        for name in self.models:
            try:
                self.r.xgroup_create(q.stream_key(name), q.GROUP, id="0", mkstream=True)
            except redis.ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise
        self.publish()

    def publish(self) -> None:
        p = self.r.pipeline()
        for name, card in self.cards.items():
            p.set(q.model_key(name), json.dumps(card), ex=q.MODEL_CARD_TTL_S)
        p.set(
            q.worker_key(self.consumer),
            json.dumps({"models": list(self.models), "pid": os.getpid(), "ts": time.time()}),
            ex=q.HEARTBEAT_TTL_S,
        )
        p.execute()

    # ---- heartbeat -----------------------------------------------------------------
    def _heartbeat(self) -> None:
        hb = redis.Redis.from_url(self.settings.redis_url, decode_responses=True)
        last_cards = 0.0
        while not self._stop.wait(q.HEARTBEAT_EVERY_S):
            try:
                hb.set(
                    q.worker_key(self.consumer),
                    json.dumps({"models": list(self.models), "pid": os.getpid(), "ts": time.time()}),
                    ex=q.HEARTBEAT_TTL_S,
                )
                if time.monotonic() - last_cards > q.MODEL_CARD_TTL_S / 3:
                    last_cards = time.monotonic()
                    for name, card in self.cards.items():
                        hb.set(q.model_key(name), json.dumps(card), ex=q.MODEL_CARD_TTL_S)
                with self._held_lock:
                    held = {s: list(ids) for s, ids in self.held.items() if ids}
                for stream, ids in held.items():  # reset the idle time of what we hold
                    hb.xclaim(stream, q.GROUP, self.consumer, min_idle_time=0, message_ids=ids, justid=True)
            except redis.RedisError as e:
                log.warning("heartbeat failed: %s", e)

    # ---- the loop ------------------------------------------------------------------
    def read_batch(self, block_ms: int = 1000) -> list[tuple[str, str, dict]]:
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

    def _xread(self, streams, count, block_ms) -> list[tuple[str, str, dict]]:
        block = None if block_ms is None else max(block_ms, 1)
        res = self.r.xreadgroup(q.GROUP, self.consumer, streams, count=count, block=block)
        return [(stream, mid, fields) for stream, entries in (res or []) for mid, fields in entries if fields]

    def reclaim(self) -> list[tuple[str, str, dict]]:
        """Take over jobs idle longer than claim_idle_ms (their worker stopped heart-beating them)."""
        out = []
        for name in self.models:
            stream = q.stream_key(name)
            res = self.r.xautoclaim(
                stream,
                q.GROUP,
                self.consumer,
                min_idle_time=self.settings.claim_idle_ms,
                start_id="0-0",
                count=self.settings.max_batch_size,
            )
            entries = res[1]  # Redis 6.2 answers [cursor, entries]; 7.x adds the deleted ids
            for mid, fields in entries:
                if not fields:
                    self.r.xack(stream, q.GROUP, mid)
                    continue
                info = self.r.xpending_range(stream, q.GROUP, min=mid, max=mid, count=1)
                deliveries = info[0]["times_delivered"] if info else 1
                self.metrics.reclaimed.labels(name).inc()
                if deliveries > self.settings.max_deliveries:
                    self.dead_letter(stream, mid, fields, deliveries)
                else:
                    log.warning("reclaimed %s from %s (delivery %d)", mid, stream, deliveries)
                    out.append((stream, mid, fields))
        return out

    def dead_letter(self, stream: str, mid: str, fields: dict, deliveries: int) -> None:
        try:
            job = q.JobMessage.decode(fields)
        except Exception:
            job = None
        self.r.xadd(q.DEAD_LETTER_STREAM, {**fields, "stream": stream, "deliveries": str(deliveries)})
        if job is not None:
            prob = WorkerFailure(
                f"the job was delivered {deliveries} times without completing "
                f"(a worker crashed on it); it was moved to the dead-letter stream"
            )
            self.store(job, {"status": "failed", "problem": prob.problem()}, "failed")
            self.metrics.jobs.labels(job.model, "dead").inc()
        self.r.xack(stream, q.GROUP, mid)
        self.r.xdel(stream, mid)

    def store(self, job: q.JobMessage, payload: dict, status: str) -> None:
        ttl = self.settings.result_ttl_s
        p = self.r.pipeline()
        p.set(q.result_key(job.id), json.dumps(payload), ex=ttl)
        fields = {"status": status, "finished": f"{time.time():.6f}"}
        if status == "done":
            fields["progress"] = "1"
        p.hset(q.job_key(job.id), mapping=fields)
        p.expire(q.job_key(job.id), ttl)
        p.publish(q.EVENTS_CHANNEL, job.id)
        p.execute()

    def process(self, batch: list[tuple[str, str, dict]]) -> None:
        by_model: dict[str, list[tuple[str, str, q.JobMessage]]] = {}
        for stream, mid, fields in batch:
            try:
                job = q.JobMessage.decode(fields)
            except Exception as e:  # a malformed entry can never succeed
                log.error("dropping malformed entry %s: %s", mid, e)
                self.r.xack(stream, q.GROUP, mid)
                self.r.xdel(stream, mid)
                continue
            by_model.setdefault(job.model, []).append((stream, mid, job))
        for model_name, jobs in by_model.items():
            with self._held_lock:
                for stream, mid, _ in jobs:
                    self.held.setdefault(stream, set()).add(mid)
            try:
                self._run_model_batch(model_name, jobs)
            finally:
                with self._held_lock:
                    for stream, mid, _ in jobs:
                        self.held.get(stream, set()).discard(mid)

    def _finish(self, stream: str, mid: str) -> None:
        p = self.r.pipeline()
        p.xack(stream, q.GROUP, mid)
        p.xdel(stream, mid)
        p.execute()

    def _run_model_batch(self, model_name: str, jobs: list[tuple[str, str, q.JobMessage]]) -> None:
        model = self.models.get(model_name)
        items: list[tuple[str, str, q.JobMessage, Item]] = []
        now = time.time()
        for stream, mid, job in jobs:
            if self.r.exists(q.cancel_key(job.id)):
                self.store(
                    job,
                    {"status": "cancelled", "problem": CancelledProblem("cancelled before it ran").problem()},
                    "cancelled",
                )
                self.metrics.jobs.labels(model_name, "cancelled").inc()
                self._finish(stream, mid)
                continue
            self.metrics.queue_wait.labels(model_name).observe(max(0.0, now - job.enqueued_at))
            if model is None:
                self.store(
                    job,
                    {
                        "status": "failed",
                        "problem": WorkerFailure(f"this worker does not serve model {model_name!r}").problem(),
                    },
                    "failed",
                )
                self._finish(stream, mid)
                continue
            self.r.hset(q.job_key(job.id), mapping={"status": "running", "started": f"{now:.6f}"})
            if job.kind != "explain":
                self._run_single(model, stream, mid, job, now)
                continue
            try:
                img = decode_image(job.request["image"], self.settings.max_image_pixels)
            except Problem as e:
                self.store(job, {"status": "failed", "problem": e.problem()}, "failed")
                self.metrics.jobs.labels(model_name, "failed").inc()
                self._finish(stream, mid)
                continue
            items.append(
                (
                    stream,
                    mid,
                    job,
                    Item(request=job.request, image=img, progress=JobReporter(self.r, job.id).progress()),
                )
            )
        if not items:
            return
        self.metrics.batch_size.labels(model_name).observe(len(items))
        t0 = time.perf_counter()
        try:
            run_batch(model, [it for *_, it in items])
        except Exception as e:  # a bug must fail the jobs, not the worker
            log.error("batch failed: %s", traceback.format_exc())
            for *_, it in items:
                it.error = WorkerFailure(f"internal error: {type(e).__name__}: {e}")
        batch_s = time.perf_counter() - t0
        for stream, mid, job, it in items:
            if it.result is not None:
                for ex in it.result["explanations"]:
                    self.metrics.explanation_duration.labels(ex["method"], model_name).observe(ex["compute_ms"] / 1000)
                it.result["id"] = job.id
                it.result["timings"] = {
                    "queue_ms": round(max(0.0, now - job.enqueued_at) * 1000, 3),
                    "compute_ms": round(it.compute_ms, 3),
                    "batch_ms": round(batch_s * 1000, 3),
                    "batch_size": len(items),
                }
                self.store(job, {"status": "done", "response": it.result}, "done")
                self.metrics.jobs.labels(model_name, "done").inc()
            else:
                err = it.error or WorkerFailure("no result")
                status = "cancelled" if err.status == 409 else "failed"
                self.store(job, {"status": status, "problem": err.problem()}, status)
                self.metrics.jobs.labels(model_name, status).inc()
            self._finish(stream, mid)

    def _run_single(self, model: LoadedModel, stream: str, mid: str, job: q.JobMessage, now: float) -> None:
        """evaluate / compare jobs: one at a time, with progress and cancellation."""
        runner = RUNNERS.get(job.kind)
        try:
            if runner is None:
                raise WorkerFailure(f"unknown job kind {job.kind!r}")
            body = runner(model, job.request, self.settings.max_image_pixels, JobReporter(self.r, job.id).progress())
            body["id"] = job.id
            body["timings"]["queue_ms"] = round(max(0.0, now - job.enqueued_at) * 1000, 3)
            self.store(job, {"status": "done", "response": body}, "done")
            self.metrics.jobs.labels(model.name, "done").inc()
        except Problem as e:
            status = "cancelled" if e.status == 409 else "failed"
            self.store(job, {"status": status, "problem": e.problem()}, status)
            self.metrics.jobs.labels(model.name, status).inc()
        except Exception as e:  # a bug must fail the job, not the worker
            log.error("%s job failed: %s", job.kind, traceback.format_exc())
            self.store(
                job,
                {"status": "failed", "problem": WorkerFailure(f"internal error: {type(e).__name__}: {e}").problem()},
                "failed",
            )
            self.metrics.jobs.labels(model.name, "failed").inc()
        self._finish(stream, mid)

    def run(self) -> None:
        self.load()
        hb = threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)
        hb.start()
        log.info("worker %s serving %s", self.consumer, ", ".join(self.models))
        try:
            while not self._stop.is_set():
                batch = []
                if time.monotonic() - self._last_claim > max(self.settings.claim_idle_ms / 2000, 0.2):
                    self._last_claim = time.monotonic()
                    batch = self.reclaim()
                if not batch:
                    batch = self.read_batch()
                if batch:
                    self.process(batch)
        except redis.ConnectionError as e:
            if not self._stop.is_set():
                raise SystemExit(f"lost Redis: {e}")
        finally:
            self._stop.set()
            try:
                self.r.delete(q.worker_key(self.consumer))
            except redis.RedisError:
                pass

    def stop(self, *_args) -> None:
        self._stop.set()


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("WHITEBOX_LOG_LEVEL", "INFO"), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    settings = Settings.from_env()
    models = [m for m in os.environ.get("WHITEBOX_WORKER_MODELS", "").split(",") if m] or None
    w = Worker(settings, models=models)
    signal.signal(signal.SIGTERM, w.stop)
    signal.signal(signal.SIGINT, w.stop)
    port = int(os.environ.get("WHITEBOX_WORKER_METRICS_PORT", "0") or 0)
    if port:
        from prometheus_client import start_http_server

        start_http_server(port, addr=os.environ.get("WHITEBOX_WORKER_METRICS_HOST", "127.0.0.1"))
    w.run()
