"""Dynamic batching (issue 7): the worker reads at most max_batch_size jobs and waits at most
max_queue_delay to fill a batch; a batch of jobs gives the same maps as each job alone,
on the fused path too."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest
import torch
from PIL import Image

from schemas import queue as q
from schemas.api import ExplainRequest
from schemas.registry import load_registry
from schemas.settings import Settings
from tests.helpers import max_rel_diff, random_image, seeded_torchvision
from workers.serving.pipeline import Item, run_batch
from workers.serving.render import decode_array

SIX = ["saliency", "deconvnet", "guided_backprop", "gradcam", "guided_gradcam", "fem"]


def _request(**kw) -> dict:
    return ExplainRequest.model_validate({"model": "m", "image": "unused", **kw}).model_dump()


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
    batch = [Item(request=r, image=i) for r, i in zip(reqs, imgs)]
    run_batch(m, batch)
    for r, img, b in zip(reqs, imgs, batch):
        alone = Item(request=r, image=img)
        run_batch(m, [alone])
        assert b.result["target"] == alone.result["target"]
        assert b.result["prediction"]["class_index"] == alone.result["prediction"]["class_index"]
        for eb, ea in zip(b.result["explanations"], alone.result["explanations"]):
            a, ref = torch.tensor(decode_array(eb["array"])), torch.tensor(decode_array(ea["array"]))
            assert float(ref.abs().max()) > 0
            assert max_rel_diff(a, ref) <= 1e-5, eb["method"]


def test_settings_defaults_and_env():
    s = Settings()
    assert s.max_batch_size >= 1 and s.max_queue_delay_ms >= 0
    import os

    old = {k: os.environ.get(k) for k in ("WHITEBOX_MAX_BATCH_SIZE", "WHITEBOX_MAX_QUEUE_DELAY_MS")}
    try:
        os.environ["WHITEBOX_MAX_BATCH_SIZE"] = "1"
        os.environ["WHITEBOX_MAX_QUEUE_DELAY_MS"] = "0"
        e = Settings.from_env()
        assert e.max_batch_size == 1 and e.max_queue_delay_ms == 0
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    """One Worker object (its metrics live in the process-wide Prometheus registry) on an
    embedded Redis; read_batch only needs the stream names, so no model is loaded."""
    from cli.embedded_redis import EmbeddedRedis
    from workers.serving.worker import Worker

    r = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    w = Worker(Settings(redis_url=r.url), registry=load_registry(), models=["shapes-cnn"], consumer="test")
    w.models = {"shapes-cnn": None}
    yield w
    r.stop()


def _reset(w, size: int, delay_ms: float):
    w.settings = dataclasses.replace(w.settings, max_batch_size=size, max_queue_delay_ms=delay_ms)
    w.r.delete(q.stream_key("shapes-cnn"))
    w.r.xgroup_create(q.stream_key("shapes-cnn"), q.GROUP, id="0", mkstream=True)
    return w


def _enqueue(r, k: int) -> None:
    job = q.JobMessage(id=f"job{k}", model="shapes-cnn", request={"k": k}, image_size=(64, 64))
    r.xadd(q.stream_key("shapes-cnn"), job.encode())


def test_read_batch_caps_at_max_batch_size(worker):
    w = _reset(worker, size=4, delay_ms=0)
    for k in range(6):
        _enqueue(w.r, k)
    first = w.read_batch(block_ms=100)
    second = w.read_batch(block_ms=100)
    assert len(first) == 4 and len(second) == 2
    got = [q.JobMessage.decode(f).id for _, _, f in first + second]
    assert got == [f"job{k}" for k in range(6)]  # in arrival order


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
