"""Batch isolation and jobs that cannot succeed, on the real worker code path (run_batch, the
Executor with a real Redis, a worker process) and the demo model: one poison item of a batch fails
alone and the others are exactly what they are without it; a result too large to store fails its
job on its first delivery with a 413 problem and the worker goes on; every seed is bounded at the door."""

from __future__ import annotations

import base64
import io
import logging
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import redis
from PIL import Image
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from cli.embedded_redis import EmbeddedRedis
from common.telemetry import WorkerMetrics
from schemas import queue as q
from schemas.api import ExplainRequest, MapIn, MethodCall
from schemas.methods import CATALOG
from schemas.queue import JobResult
from schemas.settings import Settings
from schemas.status import JobStatus
from tests.conftest import ROOT, write_demo_registry
from tests.helpers import demo_model, png_b64, png_bytes, random_image
from workers.explain.base import Progress
from workers.serving.execute import Executor
from workers.serving.outcome import Delivery, Entry, Outcomes
from workers.serving.pipeline import Item, run_batch
from workers.serving.render import decode_array

MODEL = "shapes-cnn"
SEED_MAX = 2**63 - 1
# a message such as an exception's text may carry: none of it may reach an answer
LEAKY = "cannot report to /srv/whitebox/secret.py for <Reporter object at 0x7f3a9c2b1d60>"


@pytest.fixture(scope="module")
def model():
    return demo_model()


def request(**kw) -> ExplainRequest:
    return ExplainRequest.model_validate({"model": MODEL, "image": "unused", "outputs": ["array"], **kw})


def maps(it: Item) -> list[np.ndarray]:
    assert it.result is not None, it.error
    return [decode_array(e.array) for e in it.result.explanations]


def assert_bit_identical(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype == np.float32 and np.array_equal(x, y)


def poison_progress(_fraction: float) -> None:
    raise RuntimeError(LEAKY)


def test_a_poison_item_fails_alone_and_the_others_equal_their_runs_alone(model, caplog):
    """The poison raises inside the explainer (its progress, which a pass over several items reports
    to), so the batch is run again item by item: the poison gets a 500 that names only the
    exception's type, the three others are bit-identical to each run alone."""
    methods = ["saliency", "gradcam", "integrated_gradients", "occlusion"]
    imgs = [Image.fromarray(random_image(64, 64, seed=s)) for s in range(4)]
    items = [Item(request=request(methods=methods), image=img) for img in imgs]
    items[1].progress = Progress(poison_progress)
    with caplog.at_level(logging.WARNING, logger="whitebox.worker"):
        run_batch(model, items)
    assert "a batch of 4 raised RuntimeError; running its items one by one" in caplog.text
    poison = items[1]
    assert poison.result is None and poison.error is not None and poison.error.status == 500
    assert "RuntimeError" in poison.error.detail
    assert "0x7f" not in poison.error.detail and "/srv" not in poison.error.detail
    for k in (0, 2, 3):
        alone = Item(request=request(methods=methods), image=imgs[k])
        run_batch(model, [alone])
        assert items[k].result.target == alone.result.target
        assert_bit_identical(maps(items[k]), maps(alone))


def test_an_image_that_cannot_be_preprocessed_fails_alone(model, caplog):
    """A corrupt image (its pixel data cut off) fails in preprocessing, alone; the three others are
    bit-identical to each run alone."""
    methods = ["saliency", "occlusion"]
    good = [Image.fromarray(random_image(48, 64, seed=s)) for s in range(3)]
    data = png_bytes(random_image(64, 64, seed=9))
    corrupt = Image.open(io.BytesIO(data[: len(data) // 2]))  # opened, not loaded: loading fails
    items = [Item(request=request(methods=methods), image=img) for img in [good[0], corrupt, good[1], good[2]]]
    with caplog.at_level(logging.WARNING, logger="whitebox.worker"):
        run_batch(model, items)
    assert "a batch of 4 raised OSError; running its items one by one" in caplog.text
    assert items[1].result is None and items[1].error.status == 500 and "OSError" in items[1].error.detail
    for it, img in zip([items[0], items[2], items[3]], good, strict=True):
        alone = Item(request=request(methods=methods), image=img)
        run_batch(model, [alone])
        assert_bit_identical(maps(it), maps(alone))


# ---- the Executor, with a real Redis ------------------------------------------------------


@pytest.fixture(scope="module")
def r(tmp_path_factory):
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        c = redis.Redis.from_url(server.url, decode_responses=True)
        c.xgroup_create(q.stream_key(MODEL), q.GROUP, id="0", mkstream=True)
        yield c


def executor(r: redis.Redis) -> Executor:
    settings = Settings(redis_url="redis://unused")
    metrics = WorkerMetrics(CollectorRegistry())
    return Executor(r, settings, metrics, Outcomes(r, metrics, 60, settings.max_result_bytes))


def deliver(r: redis.Redis, jobs: list[q.ExplainJob | q.CompareJob]) -> list[Delivery]:
    """The jobs through the stream: XADD, one XREADGROUP, decoded as the worker decodes them."""
    stream = q.stream_key(MODEL)
    for job in jobs:
        r.xadd(stream, q.encode_job(job))
    got = r.xreadgroup(q.GROUP, "worker-1", {stream: ">"}, count=len(jobs))
    entries = [Entry(stream, mid, fields) for _, es in got for mid, fields in es]
    return [Delivery(e, q.decode_job(e.fields)) for e in entries]


def explain_job(job_id: str, image: str, methods: list) -> q.ExplainJob:
    req = ExplainRequest.model_validate({"model": MODEL, "image": image, "methods": methods, "outputs": ["array"]})
    return q.ExplainJob(id=job_id, model=MODEL, request=req)


def result(r: redis.Redis, job_id: str) -> JobResult:
    return JobResult.model_validate_json(r.get(q.result_key(job_id)))


def result_maps(res: JobResult) -> list[np.ndarray]:
    assert res.status == JobStatus.done and res.response is not None, res.problem
    return [decode_array(e["array"]) for e in res.response["explanations"]]


def test_a_poison_job_in_a_worker_batch_fails_alone(model, r):
    """Four explain jobs and a compare job in one read. The poison carries a seed of 2**64 (what a
    gateway without the seed bound let through: "Overflow when unpacking long long" inside LIME);
    it fails alone with a 500, the compare job with undecodable data fails alone with a 422, the
    three good jobs are done and their maps bit-identical to each job run alone."""
    images = [png_b64(random_image(64, 64, seed=s)) for s in range(4)]
    lime = {"name": "lime", "params": {"samples": 40, "seed": 1}}
    jobs: list[q.ExplainJob | q.CompareJob] = [
        explain_job(f"e{k}", img, ["saliency", lime]) for k, img in enumerate(images)
    ]
    bad_map = MapIn(array={"shape": [2, 2], "data": "abc"}, mask_png=None)
    jobs.append(q.CompareJob(id="cmp", model=MODEL, request={"map_a": bad_map, "map_b": bad_map}))
    deliveries = deliver(r, jobs)
    call = deliveries[1].job.request.methods[1]  # the poison, as it arrived from such a gateway
    call._parsed = call.parsed.model_copy(update={"seed": 2**64})
    call.params["seed"] = 2**64
    executor(r).run(model, MODEL, deliveries)
    poison = result(r, "e1")
    assert poison.status == JobStatus.failed and poison.problem.status == 500
    assert "ValueError" in poison.problem.detail and "long long" not in poison.problem.detail
    cmp = result(r, "cmp")
    assert cmp.status == JobStatus.failed and cmp.problem.status == 422 and "base64" in cmp.problem.detail
    assert r.xpending(q.stream_key(MODEL), q.GROUP)["pending"] == 0
    for k in (0, 2, 3):
        (alone,) = deliver(r, [explain_job(f"alone{k}", images[k], ["saliency", lime])])
        executor(r).run(model, MODEL, [alone])
        assert_bit_identical(result_maps(result(r, f"e{k}")), result_maps(result(r, f"alone{k}")))


# ---- a worker process ---------------------------------------------------------------------


def wait_for(check, timeout: float, what: str, proc: subprocess.Popen, log) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        assert proc.poll() is None, f"the worker exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
        time.sleep(0.1)
    raise AssertionError(f"no {what} within {timeout} s:\n{log.read_text()[-3000:]}")


def test_an_oversize_result_fails_on_its_first_delivery_and_the_worker_goes_on(tmp_path):
    """A worker with WHITEBOX_MAX_RESULT_BYTES=20000: a 64x64 float32 array (about 22 kB of base64) fails
    its job at once with the 413 problem (no crash, no redelivery, nothing dead-lettered); the same
    worker process then serves a small job."""
    with EmbeddedRedis(tmp_path / "redis") as server:
        r = redis.Redis.from_url(server.url, decode_responses=True)
        env = {
            **os.environ,
            "REDIS_URL": server.url,
            "WHITEBOX_MODELS": str(write_demo_registry(tmp_path)),
            "WHITEBOX_MAX_RESULT_BYTES": "20000",
            "WHITEBOX_WORKER_THREADS": "1",
            "WHITEBOX_LOG_LEVEL": "WARNING",
        }
        log = tmp_path / "worker.log"
        with open(log, "w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "workers"], env=env, cwd=ROOT, stdout=out, stderr=out)
        try:
            wait_for(lambda: r.keys(q.WORKER_PATTERN), 120, "heartbeat", proc, log)
            stream = q.stream_key(MODEL)
            big = explain_job("big", png_b64(random_image(64, 64)), ["saliency"])
            r.xadd(stream, q.encode_job(big))
            wait_for(lambda: r.exists(q.result_key("big")), 60, "result", proc, log)
            got = result(r, "big")
            assert got.status == JobStatus.failed and got.problem.status == 413
            assert got.problem.detail.startswith("result of ") and got.problem.detail.endswith(
                " bytes is over the limit of 20000 bytes; ask for fewer methods/outputs or a smaller image"
            )
            assert r.xlen(q.DEAD_LETTER_STREAM) == 0 and r.xpending(stream, q.GROUP)["pending"] == 0
            small = q.ExplainJob(
                id="small",
                model=MODEL,
                request=ExplainRequest.model_validate(
                    {
                        "model": MODEL,
                        "image": png_b64(random_image(16, 16)),
                        "methods": ["gradcam"],
                        "outputs": ["mask_png"],
                    }
                ),
            )
            r.xadd(stream, q.encode_job(small))
            wait_for(lambda: r.exists(q.result_key("small")), 60, "result", proc, log)
            ok = result(r, "small")
            assert ok.status == JobStatus.done and base64.b64decode(ok.response["explanations"][0]["mask_png"])
            assert proc.poll() is None  # the same process, alive
        finally:
            proc.terminate()
            proc.wait(10)


# ---- seeds at the door ----------------------------------------------------------------------


def _seed_schemas(schema: dict) -> list[dict]:
    """Every integer schema of a property named ``seed``, anywhere in a params JSON schema."""
    found = []

    def walk(node: object, name: str | None = None) -> None:
        if isinstance(node, dict):
            if name == "seed":
                found.extend(b for b in [node, *node.get("anyOf", [])] if b.get("type") == "integer")
            for key, value in node.items():
                if key == "properties":
                    for prop, sub in value.items():
                        walk(sub, prop)
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return found


def test_every_seed_is_bounded_at_the_door():
    seeds = [s for spec in CATALOG.values() for s in _seed_schemas(spec.params.model_json_schema())]
    assert len(seeds) >= 7
    assert all(s.get("minimum") == 0 and s.get("maximum") == SEED_MAX for s in seeds), seeds
    assert MethodCall(name="lime", params={"seed": SEED_MAX}).parsed.seed == SEED_MAX
    for bad in (SEED_MAX + 1, -1):
        with pytest.raises(ValidationError):
            MethodCall(name="lime", params={"seed": bad})
