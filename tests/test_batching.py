"""Dynamic batching (issue 7): the worker reads at most max_batch_size jobs and waits at most
max_queue_delay to fill a batch; a batch of jobs gives the same maps as each job alone,
on the fused path too."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from PIL import Image

from cli.embedded_redis import EmbeddedRedis
from schemas import queue as q
from schemas.api import ExplainRequest
from schemas.registry import load_registry
from schemas.settings import Settings
from tests.helpers import max_rel_diff, random_image, seeded_torchvision
from workers.serving.pipeline import Item, run_batch
from workers.serving.render import decode_array
from workers.serving.targets import resolve_target
from workers.serving.worker import Worker

SIX = ["saliency", "deconvnet", "guided_backprop", "gradcam", "guided_gradcam", "fem"]


def _request(**kw) -> ExplainRequest:
    return ExplainRequest.model_validate({"model": "m", "image": "unused", **kw})


def _item(model, req: ExplainRequest, image: Image.Image) -> Item:
    return Item(request=req, image=image, target_index=resolve_target(model, req.target))


def test_fused_batch_equals_each_job_alone():
    """VGG (in-place ReLUs) with jobs of different targets, method sets and image sizes in one batch."""
    m = seeded_torchvision("vgg11", size=64, seed=7)
    reqs = [_request(methods=SIX, outputs=["array"], normalize="none", target=t) for t in (3, "predicted")]
    reqs.append(
        _request(
            methods=["fem", "saliency", {"name": "gradcam", "params": {"layer": "features.10"}}],
            outputs=["array"],
            normalize="none",
            target=8,
        )
    )
    reqs.append(_request(methods=["guided_gradcam", "deconvnet"], outputs=["array"], normalize="none", target=1))
    imgs = [Image.fromarray(random_image(64 + 16 * i, 64, seed=10 + i)) for i in range(len(reqs))]
    batch = [_item(m, r, i) for r, i in zip(reqs, imgs)]
    run_batch(m, batch)
    for r, img, b in zip(reqs, imgs, batch):
        alone = _item(m, r, img)
        run_batch(m, [alone])
        assert b.result.target == alone.result.target
        assert b.result.prediction.class_index == alone.result.prediction.class_index
        for eb, ea in zip(b.result.explanations, alone.result.explanations, strict=True):
            a, ref = torch.tensor(decode_array(eb.array)), torch.tensor(decode_array(ea.array))
            assert float(ref.abs().max()) > 0
            assert max_rel_diff(a, ref) <= 1e-5, eb.method


def test_settings_defaults_and_env(monkeypatch):
    s = Settings()
    assert s.max_batch_size >= 1 and s.max_queue_delay_ms >= 0
    monkeypatch.setenv("WHITEBOX_MAX_BATCH_SIZE", "1")
    monkeypatch.setenv("WHITEBOX_MAX_QUEUE_DELAY_MS", "0")
    e = Settings.from_env()
    assert e.max_batch_size == 1 and e.max_queue_delay_ms == 0


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    """One Worker object (its metrics live in the process-wide Prometheus registry) on an
    embedded Redis; read_batch only needs the stream names, so no model is loaded."""
    r = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    w = Worker(Settings(redis_url=r.url), registry=load_registry(), models=["shapes-cnn"], consumer="test")
    w.models = {"shapes-cnn": None}
    yield w
    r.stop()


def _reset(w, size: int, delay_ms: float):
    w.settings = w.settings.model_copy(update={"max_batch_size": size, "max_queue_delay_ms": delay_ms})
    w.r.delete(q.stream_key("shapes-cnn"))
    w.r.xgroup_create(q.stream_key("shapes-cnn"), q.GROUP, id="0", mkstream=True)
    return w


def _job(k: int) -> q.ExplainJob:
    req = ExplainRequest.model_validate({"model": "shapes-cnn", "image": "unused", "methods": ["fem"], "top_k": k + 1})
    return q.ExplainJob(id=f"job{k}", model="shapes-cnn", request=req)


def _enqueue(r, k: int) -> None:
    r.xadd(q.stream_key("shapes-cnn"), q.encode_job(_job(k)))


def test_read_batch_caps_at_max_batch_size(worker):
    w = _reset(worker, size=4, delay_ms=0)
    for k in range(6):
        _enqueue(w.r, k)
    first = w.read_batch(block_ms=100)
    second = w.read_batch(block_ms=100)
    assert len(first) == 4 and len(second) == 2
    jobs = [q.decode_job(e.fields) for e in first + second]
    assert [j.id for j in jobs] == [f"job{k}" for k in range(6)]  # in arrival order
    assert [j.request.top_k for j in jobs] == [k + 1 for k in range(6)]  # the typed request crossed intact


def test_read_batch_waits_at_most_the_queue_delay(worker):
    w = _reset(worker, size=8, delay_ms=400)
    _enqueue(w.r, 0)
    late = threading.Timer(0.1, lambda: _enqueue(w.r, 1))
    late.start()
    t0 = time.monotonic()
    batch = w.read_batch(block_ms=100)
    waited = time.monotonic() - t0
    late.join()
    assert len(batch) == 2  # the job that came 100 ms later joined the batch
    assert waited < 2.0  # bounded by max_queue_delay (plus Redis round trips), never blocks on a full batch
    w = _reset(worker, size=8, delay_ms=0)
    _enqueue(w.r, 2)
    assert len(w.read_batch(block_ms=100)) == 1  # no delay: what is there goes at once


# ---- how jobs end: one path (workers.serving.outcome) ------------------------------------------


def _result(w, job_id: str) -> q.JobResult:
    return q.JobResult.model_validate_json(w.r.get(q.result_key(job_id)))


def _events(pubsub, n: int, timeout_s: float = 5.0) -> list[str]:
    got, deadline = [], time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < deadline:
        m = pubsub.get_message(timeout=0.1)
        if m:
            got.append(m["data"])
    return got


def _count(w, outcome: str) -> float:
    return w.metrics.jobs.labels("shapes-cnn", outcome)._value.get()


def test_every_end_stores_a_result_and_removes_the_entry(worker):
    """A malformed entry is dropped; a cancelled job and a job for a model this worker does not
    serve (the fixture loads none) each get a typed JobResult, a job state, a count, an event."""
    w = _reset(worker, size=8, delay_ms=0)
    stream = q.stream_key("shapes-cnn")
    w.r.xadd(stream, {"job": '{"kind": "explain"}'})
    _enqueue(w.r, 0)
    _enqueue(w.r, 1)
    w.r.set(q.cancel_key("job1"), "1")
    before = {o: _count(w, o) for o in ("failed", "cancelled")}
    events = w.r.pubsub(ignore_subscribe_messages=True)
    events.subscribe(q.EVENTS_CHANNEL)
    batch = w.read_batch(block_ms=100)
    assert len(batch) == 3
    w.process(batch)
    assert w.r.xlen(stream) == 0 and w.r.xpending(stream, q.GROUP)["pending"] == 0
    failed, cancelled = _result(w, "job0"), _result(w, "job1")
    assert failed.status == "failed" and "does not serve" in failed.problem.detail and failed.response is None
    assert cancelled.status == "cancelled" and cancelled.problem.status == 409
    assert w.r.hget(q.job_key("job0"), "status") == "failed"
    assert w.r.hget(q.job_key("job1"), "status") == "cancelled"
    assert _count(w, "failed") == before["failed"] + 1 and _count(w, "cancelled") == before["cancelled"] + 1
    assert sorted(_events(events, 2)) == ["job0", "job1"]


def test_a_job_delivered_too_often_goes_to_the_dead_letter_stream(worker):
    w = _reset(worker, size=8, delay_ms=0)
    w.settings = w.settings.model_copy(update={"claim_idle_ms": 1, "max_deliveries": 2})
    stream = q.stream_key("shapes-cnn")
    _enqueue(w.r, 5)
    ((_, ((mid, _),)),) = w.r.xreadgroup(q.GROUP, "ghost-1", {stream: ">"}, count=1)
    for ghost in ("ghost-2", "ghost-3"):  # three holders that died with it
        w.r.xclaim(stream, q.GROUP, ghost, 0, [mid])
    assert w.r.xpending_range(stream, q.GROUP, min=mid, max=mid, count=1)[0]["times_delivered"] == 3
    dead_before, count_before = w.r.xlen(q.DEAD_LETTER_STREAM), _count(w, "dead")
    time.sleep(0.01)
    assert w.reclaim() == []
    res = _result(w, "job5")
    assert res.status == "failed" and "dead-letter" in res.problem.detail
    assert w.r.xlen(q.DEAD_LETTER_STREAM) == dead_before + 1 and _count(w, "dead") == count_before + 1
    assert w.r.xlen(stream) == 0 and w.r.xpending(stream, q.GROUP)["pending"] == 0
