"""The service end to end: real gateway, worker and Redis processes over HTTP (issue 2)."""

from __future__ import annotations

import base64
import io
import json
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import SHAPES_LABELS
from tests.helpers import png_b64, png_bytes, random_image
from workers.training.shapes import generate

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def shape():
    images, labels, masks = generate(1, seed=4242)
    return images[0], int(labels[0])


def body(image_b64: str, **kw) -> dict:
    return {"model": "shapes-cnn", "image": image_b64, "methods": ["saliency", "gradcam", "fem"], **kw}


def decode_png(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def decode_array(a: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(a["data"]), dtype="<f4").reshape(a["shape"])


def assert_problem(r: httpx.Response, status: int, *words: str) -> dict:
    assert r.status_code == status, r.text[:500]
    assert r.headers["content-type"].startswith("application/problem+json")
    p = r.json()
    assert p["status"] == status and p["title"] and p["type"]
    for w in words:
        assert w.lower() in json.dumps(p).lower(), (w, p)
    return p


# ---- happy paths ---------------------------------------------------------------------------


def test_explain_three_maps_at_client_size(client, shape):
    img, label = shape
    big = np.asarray(Image.fromarray(img).resize((96, 80), Image.BILINEAR))  # w=96, h=80
    r = client.post("/v1/explain", json=body(png_b64(big), outputs=["heatmap_png", "overlay_png", "array", "mask_png"]))
    assert r.status_code == 200, r.text[:500]
    j = r.json()
    assert j["model"] == "shapes-cnn" and len(j["id"]) == 32
    assert j["prediction"]["label"] == SHAPES_LABELS[label]  # the trained model sees the shape
    assert j["target"] == {"class_index": label, "label": SHAPES_LABELS[label]}
    assert [e["method"] for e in j["explanations"]] == ["saliency", "gradcam", "fem"]
    for e in j["explanations"]:
        for key in ("heatmap_png", "overlay_png", "mask_png"):
            assert decode_png(e[key]).size == (96, 80)
        a = decode_array(e["array"])
        assert a.shape == (80, 96) and a.min() >= 0 and a.max() == pytest.approx(1.0)
        assert e["compute_ms"] > 0
    assert j["explanations"][1]["params"]["layer"] == "features.10"
    t = j["timings"]
    assert t["total_ms"] >= t["compute_ms"] > 0 and t["queue_ms"] >= 0


def test_target_by_label_and_index(client, shape):
    img, _ = shape
    r = client.post("/v1/explain", json=body(png_b64(img), target="heart", methods=["fem"]))
    assert r.json()["target"] == {"class_index": 6, "label": "heart"}
    r = client.post("/v1/explain", json=body(png_b64(img), target=3, methods=["gradcam"], outputs=["array"]))
    assert r.json()["target"]["label"] == "star"


def test_reduce_none_and_abs_max(client, shape):
    img, _ = shape
    r = client.post(
        "/v1/explain",
        json=body(
            png_b64(img), methods=["saliency"], reduce="none", normalize="abs_max", outputs=["array", "heatmap_png"]
        ),
    )
    e = r.json()["explanations"][0]
    a = decode_array(e["array"])
    assert a.shape == (3, 64, 64) and np.abs(a).max() == pytest.approx(1.0) and a.min() < 0


def test_multipart_upload(client, shape):
    img, label = shape
    r = client.post(
        "/v1/explain",
        files={"image": ("shape.png", png_bytes(img), "image/png")},
        data={
            "model": "shapes-cnn",
            "methods": json.dumps(["gradcam", {"name": "fem", "params": {"k": 2}}]),
            "target": str(label),
            "outputs": json.dumps(["array"]),
        },
    )
    assert r.status_code == 200, r.text[:300]
    j = r.json()
    assert [e["method"] for e in j["explanations"]] == ["gradcam", "fem"]
    assert j["explanations"][1]["params"]["k"] == 2


def test_jpeg_and_torchvision_models(client):
    buf = io.BytesIO()
    Image.fromarray(random_image(50, 70)).save(buf, format="JPEG")
    for model in ("resnet18", "vgg11"):
        r = client.post(
            "/v1/explain",
            json={
                "model": model,
                "image": base64.b64encode(buf.getvalue()).decode(),
                "methods": ["saliency", "gradcam", "fem"],
                "outputs": ["array"],
            },
        )
        assert r.status_code == 200, r.text[:300]
        for e in r.json()["explanations"]:
            assert decode_array(e["array"]).shape == (50, 70)


def test_async_job_lifecycle(client, shape):
    img, _ = shape
    r = client.post("/v1/jobs", json=body(png_b64(img)))
    assert r.status_code == 202
    job = r.json()
    assert job["status"] == "queued" and r.headers["location"] == f"/v1/jobs/{job['id']}"
    for _ in range(300):
        s = client.get(r.headers["location"]).json()
        if s["status"] in ("done", "failed"):
            break
        time.sleep(0.1)
    assert s["status"] == "done" and s["progress"] == 1.0
    assert len(s["result"]["explanations"]) == 3
    assert client.delete(r.headers["location"]).json()["status"] == "done"  # nothing left to cancel
    assert_problem(client.get("/v1/jobs/" + "0" * 32), 404, "no job")


def test_discovery(client):
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    demo = models["shapes-cnn"]
    assert demo["classes"] == SHAPES_LABELS and demo["ready"] is True
    assert demo["input"]["size"] == [64, 64] and demo["default_layer"] == "features.10"
    assert "features.10" in [layer["name"] for layer in demo["layers"]]
    assert {"saliency", "gradcam", "fem"} <= set(demo["methods"])
    methods = {m["name"]: m for m in client.get("/v1/methods").json()["methods"]}
    assert methods["fem"]["params_schema"]["properties"]["k"]["default"] == 1.0
    assert methods["gradcam"]["family"] == "linearization" and methods["gradcam"]["paper"].startswith("§4.6")


def test_health_and_oip(client):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/v2/models/shapes-cnn/ready").json() == {"name": "shapes-cnn", "ready": True}
    meta = client.get("/v2/models/shapes-cnn").json()
    assert meta["name"] == "shapes-cnn" and meta["inputs"][0]["datatype"] == "BYTES"
    assert_problem(client.get("/v2/models/nope"), 404)


def test_kserve_v1_explain(client, shape):
    img, label = shape
    assert client.get("/v1/models/shapes-cnn").json() == {"name": "shapes-cnn", "ready": True}
    r = client.post(
        "/v1/models/shapes-cnn:explain",
        json={
            "instances": [{"data": png_b64(img)}, png_b64(random_image(64, 64))],
            "parameters": {"methods": ["fem"], "outputs": ["array"]},
        },
    )
    assert r.status_code == 200, r.text[:300]
    j = r.json()
    assert len(j["predictions"]) == 2 and j["predictions"][0]["class_index"] == label
    assert decode_array(j["explanations"][0][0]["array"]).shape == (64, 64)


def test_metrics_gateway_and_worker(client, stack, shape):
    client.post("/v1/explain", json=body(png_b64(shape[0]), methods=["fem"]))
    text = client.get("/metrics").text
    assert 'whitebox_http_requests_total{method="POST",route="/v1/explain",status="200"}' in text
    assert "whitebox_queue_depth" in text
    w = httpx.get(f"http://127.0.0.1:{stack.worker_metrics_port}/metrics").text
    assert 'whitebox_explanation_duration_seconds_count{method="fem",model="shapes-cnn"}' in w
    assert "whitebox_queue_wait_seconds_bucket" in w and "whitebox_batch_size_bucket" in w
    assert 'whitebox_jobs_total{model="shapes-cnn",outcome="done"}' in w


# ---- bad input: a clear 4xx problem, and the service keeps serving ---------------------------


def truncated_png(img) -> str:
    data = png_bytes(img)
    return base64.b64encode(data[: len(data) // 2]).decode()


def bomb_png() -> str:
    buf = io.BytesIO()
    Image.new("L", (5000, 5000)).save(buf, format="PNG")  # 25 Mpx in a few kB
    return base64.b64encode(buf.getvalue()).decode()


BAD = [
    ("not an image", lambda img: body(base64.b64encode(b"hello, not an image at all").decode()), 422, "image"),
    ("not base64", lambda img: body("%%%not-base64%%%"), 422, "base64"),
    ("truncated png", lambda img: body(truncated_png(img)), 422, "truncated"),
    ("decompression bomb", lambda img: body(bomb_png()), 422, "over the limit"),
    ("gif", lambda img: body(base64.b64encode(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;").decode()), 422, "image"),
    ("unknown model", lambda img: {**body(png_b64(img)), "model": "nope"}, 404, "unknown model"),
    ("unknown method", lambda img: body(png_b64(img), methods=["magic"]), 422, "unknown method"),
    ("no methods", lambda img: body(png_b64(img), methods=[]), 422, "methods"),
    ("nine methods", lambda img: body(png_b64(img), methods=["fem"] * 9), 422, "methods"),
    ("negative k", lambda img: body(png_b64(img), methods=[{"name": "fem", "params": {"k": -1}}]), 422, "k"),
    ("unknown param", lambda img: body(png_b64(img), methods=[{"name": "fem", "params": {"kk": 1}}]), 422, "kk"),
    (
        "unknown layer",
        lambda img: body(png_b64(img), methods=[{"name": "gradcam", "params": {"layer": "fc9"}}]),
        422,
        "unknown layer",
    ),
    ("target out of range", lambda img: body(png_b64(img), target=10), 422, "out of range"),
    ("negative target", lambda img: body(png_b64(img), target=-1), 422, "target"),
    ("unknown label", lambda img: body(png_b64(img), target="dodecahedron"), 422, "unknown class label"),
    ("bad output", lambda img: body(png_b64(img), outputs=["svg"]), 422, "outputs"),
    ("missing image", lambda img: {"model": "shapes-cnn", "methods": ["fem"]}, 422, "image"),
]


@pytest.mark.parametrize("digits", ["²", "٣"])
def test_non_ascii_digits_are_no_class_index(client, shape, digits):
    """str.isdigit() takes '²' and '٣'; a target or form field of them is a label, not an index: 422
    (schemathesis found the multipart form answering 500 on '²')."""
    img, _ = shape
    form = {"model": "shapes-cnn", "methods": json.dumps(["gradcam"]), "target": digits}
    r = client.post("/v1/explain", files={"image": ("s.png", png_bytes(img), "image/png")}, data=form)
    assert_problem(r, 422, "label")
    assert_problem(client.post("/v1/explain", json=body(png_b64(img), target=digits)), 422, "label")
    form = {"model": "shapes-cnn", "methods": json.dumps(["gradcam"]), "top_k": digits}
    r = client.post("/v1/explain", files={"image": ("s.png", png_bytes(img), "image/png")}, data=form)
    assert_problem(r, 422, "top_k")


@pytest.mark.parametrize("name,make,status,word", BAD, ids=[b[0] for b in BAD])
def test_bad_input(client, shape, name, make, status, word):
    assert_problem(client.post("/v1/explain", json=make(shape[0])), status, word)


def test_nan_param_and_bad_json(client, shape):
    raw = json.dumps(body(png_b64(shape[0]), methods=[{"name": "fem", "params": {"k": 1.0}}])).replace("1.0", "NaN")
    assert_problem(client.post("/v1/explain", content=raw, headers={"content-type": "application/json"}), 422, "k")
    assert_problem(
        client.post("/v1/explain", content=b"{not json", headers={"content-type": "application/json"}), 422, "json"
    )


def test_body_over_limit(client):
    assert_problem(
        client.post("/v1/explain", content=b"x" * 3_500_000, headers={"content-type": "application/json"}), 413, "limit"
    )


def test_still_serving_after_bad_input(client, shape):
    assert client.get("/v2/health/ready").status_code == 200
    r = client.post("/v1/explain", json=body(png_b64(shape[0]), methods=["fem"]))
    assert r.status_code == 200
