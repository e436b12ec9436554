"""Cost budgets, the per-job memory bound, result limits, whole admission and bounded storage (issue 11,
items 4 and 6; docs/robustness.md): the cost model as a unit, the rest through the real stack."""

from __future__ import annotations

import base64
import re
import struct
import time
import zlib

import httpx
import numpy as np
import pytest
import redis
import torch

from cli.embedded_redis import free_port
from common.images import decode_image, image_size
from schemas import queue as q
from schemas.api import MethodCall
from schemas.cost import estimate, method_cost, output_bytes, result_bytes
from schemas.problems import ImageProblem
from schemas.settings import Settings
from tests.helpers import demo_model, png_b64, png_bytes, random_image
from workers.explain import attribute
from workers.explain.base import Context, sample_bytes

SIZE = (64, 64)


def cost(name: str, **params: object) -> float:
    return method_cost(name, MethodCall(name=name, params=params).parsed, SIZE)


# ---- the cost model (unit) ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "small", "large"),
    [
        ("integrated_gradients", {"steps": 10}, {"steps": 100}),
        ("integrated_gradients", {"steps": 10, "smoothgrad": {"samples": 2}}, {"steps": 10, "smoothgrad": {}}),
        ("smoothgrad", {"samples": 5}, {"samples": 50}),
        ("smoothgrad", {"base": "saliency"}, {"base": "integrated_gradients"}),
        ("occlusion", {"window": 16, "stride": 16}, {"window": 16, "stride": 4}),
        ("lime", {"samples": 100}, {"samples": 1000}),
        ("meaningful_perturbation", {"iterations": 10}, {"iterations": 100}),
        ("adversarial", {"attack": "pgd", "steps": 5}, {"attack": "pgd", "steps": 50}),
        ("adversarial", {"attack": "one_pixel", "population": 10}, {"attack": "one_pixel", "population": 100}),
        ("adversarial", {"attack": "deepfool", "candidates": 2}, {"attack": "deepfool", "candidates": 20}),
        ("deeplift", {"rule": "rescale", "precision": "float32"}, {"rule": "reveal_cancel"}),
    ],
)
def test_estimate_grows_with_params(name, small, large):
    assert 0 < cost(name, **small) < cost(name, **large)


def test_estimate_follows_the_model():
    """Counts of forward passes (a backward = 2): the exact figures the model gives."""
    assert cost("saliency") == 3  # forward + backward
    assert cost("integrated_gradients", steps=50) == 51 * 3 + 2  # trapezoid: steps + 1 nodes, + 2 scores
    assert cost("integrated_gradients", steps=50, integration="riemann_left") == 50 * 3 + 2
    assert cost("smoothgrad", samples=10, base="integrated_gradients") == 10 * cost("integrated_gradients")
    assert cost("saliency", smoothgrad={"samples": 7}) == 7 * 3
    # occlusion windows over the model's input: (64 - 16) / 8 + 1 = 7 per axis, + the unoccluded forward
    assert cost("occlusion", window=16, stride=8) == 7 * 7 + 1
    big = MethodCall(name="occlusion", params={"window": 16, "stride": 8}).parsed
    assert method_cost("occlusion", big, (224, 224)) == 27 * 27 + 1
    assert cost("lime", samples=500) == 501
    # an evaluate request: images x (method + its metrics' model passes)
    from schemas.metrics import MetricCall

    calls = [("saliency", MethodCall(name="saliency").parsed)]
    e = estimate(calls, SIZE, images=4, metrics=[MetricCall(name="deletion_auc"), MetricCall(name="sparseness")])
    assert e.cost == 4 * (3 + 33) and e.dominant == "saliency"


def test_default_budget_refuses_the_issue_request_and_admits_the_defaults():
    limit = Settings().max_request_cost
    ig = MethodCall(name="integrated_gradients", params={"steps": 4096, "internal_batch_size": 4096})
    assert estimate([(ig.name, ig.parsed)], (224, 224)).cost > limit
    from schemas.methods import CATALOG

    every = [(n, MethodCall(name=n).parsed) for n in CATALOG]
    assert estimate(every, (224, 224)).cost <= limit


def test_result_bound_holds_for_incompressible_maps():
    """The PNG bound is above a PNG of noise (the worst case), the array bound is the base64 float32."""
    h, w = 37, 53
    noise = random_image(h, w)
    assert len(base64.b64encode(png_bytes(noise))) <= output_bytes("heatmap_png", w, h)
    assert len(base64.b64encode(png_bytes(noise[:, :, 0]))) <= output_bytes("mask_png", w, h)
    assert output_bytes("array", w, h) == len(base64.b64encode(np.zeros((h, w), np.float32).tobytes()))
    assert result_bytes(w, h, 3, ["array", "heatmap_png"]) == 3 * (
        output_bytes("array", w, h) + output_bytes("heatmap_png", w, h)
    )


# ---- the memory bound (explainer library) ----------------------------------------------------------
def test_memory_bound_caps_internal_batches():
    m = demo_model()
    x = torch.randn(2, 3, 64, 64)
    bound = 64 * 1024**2
    cap = bound // (2 * sample_bytes(m, x))
    assert 1 <= cap < 4096
    ig = {"steps": 40, "internal_batch_size": 4096}
    capped = attribute(m, x, 1, "integrated_gradients", ig, memory_bytes=bound)
    assert capped.used_params["internal_batch_size"] == cap
    alone = attribute(m, x, 1, "integrated_gradients", {**ig, "internal_batch_size": cap})
    assert torch.equal(capped.maps, alone.maps)  # the map at that internal batch, bit for bit
    # where the bound does not bite, nothing changes
    small = {"steps": 40, "internal_batch_size": 8}
    a = attribute(m, x, 1, "integrated_gradients", small, memory_bytes=bound)
    b = attribute(m, x, 1, "integrated_gradients", small)
    assert a.used_params["internal_batch_size"] == 8 and torch.equal(a.maps, b.maps)
    sg = {"samples": 40, "internal_batch_size": 4096, "seed": 3}
    s_capped = attribute(m, x, 1, "smoothgrad", sg, memory_bytes=bound)
    assert s_capped.used_params["internal_batch_size"] == cap
    s_alone = attribute(m, x, 1, "smoothgrad", {**sg, "internal_batch_size": cap})
    assert torch.equal(s_capped.maps, s_alone.maps)


def test_forward_only_chunks_are_capped_too():
    m = demo_model()
    x = torch.zeros(1, 3, 64, 64)
    ctx = Context(model=m, x=x, targets=torch.zeros(1, dtype=torch.long), params=MethodCall(name="lime").parsed)
    ctx.memory_bytes = 4 * sample_bytes(m, x)
    assert ctx.capped(256, backward=False) == 4 and ctx.capped(256) == 2 and ctx.capped(1) == 1


# ---- images at the door (unit) ---------------------------------------------------------------------
def png_header(w: int, h: int) -> bytes:
    """A PNG whose header declares w x h grey pixels, with one tiny (truncated) IDAT: only a decoder
    that reads past the header can tell it is not a whole image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_image_errors_are_fixed_sentences():
    with pytest.raises(ImageProblem) as e:
        decode_image(base64.b64encode(b"this is not an image at all").decode(), 10**6)
    assert "0x" not in e.value.detail and "BytesIO" not in e.value.detail
    with pytest.raises(ImageProblem) as e:
        decode_image(png_header(100, 100), 10**6)  # valid header, truncated data
    assert "truncated or corrupt" in e.value.detail and "0x" not in e.value.detail
    with pytest.raises(ImageProblem) as e:
        image_size(png_header(13000, 13000), 4096 * 4096)
    assert "13000x13000" in e.value.detail and "over the limit" in e.value.detail
    assert image_size(png_header(300, 200), 10**6) == (300, 200)


# ---- through the real stack -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def r(stack):
    c = redis.Redis.from_url(stack.redis.url, decode_responses=True)
    yield c
    c.close()


def assert_problem(resp: httpx.Response, status: int, *words: str) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    p = resp.json()
    for w in words:
        assert w in p["detail"], p
    assert not HEAP.search(resp.text) and "Traceback" not in resp.text
    return p


HEAP = re.compile(r"0x[0-9a-fA-F]{6,}|object at")  # a heap address as Python's repr writes it
IMG = png_b64(random_image(64, 64))


def test_over_budget_refused_before_queueing(client, r):
    before = r.xlen(q.stream_key("shapes-cnn"))
    body = {
        "model": "shapes-cnn",
        "image": IMG,
        "methods": [{"name": "integrated_gradients", "params": {"steps": 4096, "internal_batch_size": 4096}}],
    }
    p = assert_problem(client.post("/v1/explain", json=body), 422, "12,293", "10,000", "integrated_gradients")
    assert p["type"].endswith("/over-budget")
    assert_problem(client.post("/v1/jobs", json=body), 422, "integrated_gradients")
    ev = {"model": "shapes-cnn", "images": [IMG] * 16, "methods": ["lime"] * 2, "metrics": ["deletion_auc"]}
    assert_problem(client.post("/v1/evaluate", json=ev), 422, "lime", "max_request_cost")
    assert r.xlen(q.stream_key("shapes-cnn")) == before


def test_oversize_result_refused_up_front(client, r):
    before = r.xlen(q.stream_key("shapes-cnn"))
    big = png_b64(np.zeros((1000, 1000, 3), np.uint8))  # 1e6 pixels: the stack's image limit
    body = {
        "model": "shapes-cnn",
        "image": big,
        "methods": ["gradcam"] * 8,
        "outputs": ["array", "heatmap_png", "overlay_png", "mask_png"],
    }
    p = assert_problem(client.post("/v1/explain", json=body), 413, "1000x1000", "max_result_bytes")
    assert p["errors"][0]["loc"] == ["outputs"]
    assert r.xlen(q.stream_key("shapes-cnn")) == before
    ok = client.post("/v1/explain", json={**body, "methods": ["gradcam"], "outputs": ["heatmap_png"]})
    assert ok.status_code == 200, ok.text


def test_kserve_admitted_whole_or_refused_whole(stack, r):
    port = free_port()
    stack.start_gateway(port, {"WHITEBOX_MAX_QUEUE_DEPTH": "3"})
    url = f"http://127.0.0.1:{port}"
    stack.wait_ready(url)
    key = q.stream_key("shapes-cnn")
    with httpx.Client(base_url=url, timeout=120) as c:
        before = r.xlen(key)
        resp = c.post("/v1/models/shapes-cnn:explain", json={"instances": [IMG] * 5})
        p = assert_problem(resp, 503, "adds 5", "limit 3")
        assert resp.headers["retry-after"]
        assert p["type"].endswith("/overloaded") and r.xlen(key) == before  # nothing queued
        # one bad instance refuses the whole request, before any job is queued
        bad = c.post("/v1/models/shapes-cnn:explain", json={"instances": [IMG, "aGVsbG8gd29ybGQ=", IMG]})
        p = assert_problem(bad, 422)
        assert p["errors"][0]["loc"] == ["instances", "1"] and r.xlen(key) == before
        ok = c.post("/v1/models/shapes-cnn:explain", json={"instances": [IMG] * 3})
        assert ok.status_code == 200, ok.text
        assert len(ok.json()["explanations"]) == 3


def test_sync_result_deleted_async_result_kept(client, r):
    body = {"model": "shapes-cnn", "image": IMG, "methods": ["gradcam"], "outputs": ["array"]}
    sync = client.post("/v1/explain", json=body)
    assert sync.status_code == 200, sync.text
    job_id = sync.json()["id"]
    assert not r.exists(q.result_key(job_id))  # delivered: no result left behind
    assert r.hget(q.job_key(job_id), "finished")  # the job hash stays (exactly-once marker), with its TTL
    job = client.post("/v1/jobs", json=body).json()
    deadline = time.monotonic() + 60
    while client.get(f"/v1/jobs/{job['id']}").json()["status"] != "done" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.get(f"/v1/jobs/{job['id']}").json()["result"]["explanations"]
    assert r.exists(q.result_key(job["id"])) and 0 < r.ttl(q.result_key(job["id"]))  # kept with its TTL
    ev = {"model": "shapes-cnn", "images": [IMG], "methods": ["gradcam"], "metrics": ["sparseness"]}
    e = client.post("/v1/evaluate", json=ev)
    assert e.status_code == 200 and not r.exists(q.result_key(e.json()["id"]))


def test_masks_and_maps_checked_at_the_door(client, r):
    before = r.xlen(q.stream_key("shapes-cnn"))
    not_png = base64.b64encode(b"definitely not a picture").decode()
    ev = {"model": "shapes-cnn", "images": [IMG], "methods": ["gradcam"], "metrics": ["pointing_game"]}
    p = assert_problem(
        client.post("/v1/evaluate", json={**ev, "ground_truth": {"mask_png": not_png}}), 422, "not a PNG"
    )
    assert p["errors"][0]["loc"] == ["ground_truth", "mask_png"]
    per_image = {**ev, "images": [IMG, IMG], "ground_truth": [{"box": [0, 0, 9, 9]}, {"mask_png": not_png}]}
    p = assert_problem(client.post("/v1/evaluate", json=per_image), 422)
    assert p["errors"][0]["loc"] == ["ground_truth", "1", "mask_png"]
    # 13000 x 13000 declared in the header: refused from it (the data is truncated: decoding would fail otherwise)
    huge = base64.b64encode(png_header(13000, 13000)).decode()
    p = assert_problem(client.post("/v1/evaluate", json={**ev, "ground_truth": {"mask_png": huge}}), 422, "13000x13000")
    assert "over the limit" in p["detail"]
    cmp = {"map_a": {"mask_png": png_b64(random_image(8, 8)[:, :, 0])}, "map_b": {"mask_png": not_png}}
    p = assert_problem(client.post("/v1/compare", json={**cmp, "metrics": ["cc"]}), 422)
    assert p["errors"][0]["loc"] == ["map_b", "mask_png"]
    assert r.xlen(q.stream_key("shapes-cnn")) == before


def test_a_timed_out_multi_image_request_cancels_every_job(stack, r):
    """KServe with 3 slow instances and a 1 s request timeout: 504, and all 3 jobs are cancelled."""
    port = free_port()
    stack.start_gateway(port, {"WHITEBOX_REQUEST_TIMEOUT_S": "1"})
    url = f"http://127.0.0.1:{port}"
    stack.wait_ready(url)
    cancels = set(r.scan_iter(match=q.cancel_key("*")))
    params = {"methods": [{"name": "lime", "params": {"samples": 3300}}]}
    with httpx.Client(base_url=url, timeout=120) as c:
        resp = c.post("/v1/models/shapes-cnn:explain", json={"instances": [IMG] * 3, "parameters": params})
    assert_problem(resp, 504, "no result within 1 s")
    assert len(set(r.scan_iter(match=q.cancel_key("*"))) - cancels) == 3
    # the worker drops them: the stream drains within a bounded wait
    deadline = time.monotonic() + 60
    while r.xlen(q.stream_key("shapes-cnn")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert r.xlen(q.stream_key("shapes-cnn")) == 0
