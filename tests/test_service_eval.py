"""POST /v1/evaluate and POST /v1/compare through the real stack (issue 6)."""

from __future__ import annotations

import base64
import time

import numpy as np
import pytest

from tests.helpers import png_b64, random_image
from tests.test_service import assert_problem
from workers.serving.render import array_out
from workers.training.shapes import generate

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def shapes():
    images, labels, masks = generate(2, seed=777)
    return images, labels, masks


def test_evaluate_with_mask_ground_truth(client, shapes):
    images, labels, masks = shapes
    gts = [{"mask_png": png_b64((m * 255).astype(np.uint8))} for m in masks]
    r = client.post(
        "/v1/evaluate",
        json={
            "model": "shapes-cnn",
            "images": [png_b64(i) for i in images],
            "target": "predicted",
            "methods": ["gradcam", "fem"],
            "ground_truth": gts,
            "metrics": ["pointing_game", "relevance_mass_accuracy", "sparseness", "time_ms"],
        },
    )
    assert r.status_code == 200, r.text[:500]
    j = r.json()
    assert j["images"] == 2 and set(j["results"]) == {"gradcam", "fem"}
    for vals in j["results"].values():
        assert 0.0 <= vals["pointing_game"] <= 1.0
        assert 0.0 <= vals["relevance_mass_accuracy"] <= 1.0
        assert vals["time_ms"] > 0


def test_evaluate_box_and_async_job(client, shapes):
    images, _, masks = shapes
    ys, xs = np.nonzero(masks[0])
    box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
    r = client.post(
        "/v1/evaluate?wait=false",
        json={
            "model": "shapes-cnn",
            "images": [png_b64(images[0])],
            "methods": ["saliency"],
            "ground_truth": {"box": box},
            "metrics": ["pointing_game", "iou_gt"],
        },
    )
    assert r.status_code == 202
    loc = r.headers["location"]
    for _ in range(600):
        s = client.get(loc).json()
        if s["status"] in ("done", "failed"):
            break
        time.sleep(0.05)
    assert s["status"] == "done", s
    assert set(s["result"]["results"]["saliency"]) == {"pointing_game", "iou_gt"}


def test_evaluate_needs_ground_truth_for_localisation(client, shapes):
    r = client.post(
        "/v1/evaluate",
        json={
            "model": "shapes-cnn",
            "images": [png_b64(shapes[0][0])],
            "methods": ["fem"],
            "metrics": ["pointing_game"],
        },
    )
    assert_problem(r, 422, "needs a ground truth")
    r = client.post(
        "/v1/evaluate",
        json={"model": "shapes-cnn", "images": [png_b64(shapes[0][0])], "methods": ["fem"], "metrics": ["astrology"]},
    )
    assert_problem(r, 422, "unknown metric")


def test_compare_two_maps_hand_computed(client):
    a = np.array([[0, 1], [2, 3]], dtype=np.float32)
    b = np.array([[3, 2], [1, 0]], dtype=np.float32)
    r = client.post(
        "/v1/compare",
        json={"map_a": {"array": array_out(a)}, "map_b": {"array": array_out(b)}, "metrics": ["cc", "sim"]},
    )
    assert r.status_code == 200, r.text[:300]
    m = r.json()["metrics"]
    assert m["cc"] == pytest.approx(-1.0)  # b is a reversed a: perfect anti-correlation
    # SIM of minmax maps [0,1/3,2/3,1] and [1,2/3,1/3,0], each divided by its sum 2: sum of minima = 1/3
    assert m["sim"] == pytest.approx(1 / 3)
    same = client.post(
        "/v1/compare", json={"map_a": {"array": array_out(a)}, "map_b": {"array": array_out(a)}, "metrics": ["cc"]}
    ).json()["metrics"]
    assert same["cc"] == pytest.approx(1.0)


def test_compare_two_methods_on_an_image(client, shapes):
    r = client.post(
        "/v1/compare", json={"model": "shapes-cnn", "image": png_b64(shapes[0][0]), "methods": ["fem", "gradcam"]}
    )
    assert r.status_code == 200, r.text[:300]
    m = r.json()["metrics"]
    assert -1.0 <= m["cc"] <= 1.0 and "ssim" in m


def test_compare_bad_requests(client):
    a = array_out(np.zeros((2, 2), dtype=np.float32))
    assert_problem(client.post("/v1/compare", json={"map_a": {"array": a}}), 422, "map_b")
    assert_problem(
        client.post("/v1/compare", json={"map_a": {"array": a}, "map_b": {"array": a}, "metrics": ["pointing_game"]}),
        422,
        "map-vs-map",
    )
    bad = dict(a, data=base64.b64encode(b"\0" * 3).decode())
    assert_problem(client.post("/v1/compare", json={"map_a": {"array": bad}, "map_b": {"array": a}}), 422, "bytes")
    assert_problem(
        client.post(
            "/v1/compare", json={"model": "shapes-cnn", "image": png_b64(random_image(8, 8)), "methods": ["fem"]}
        ),
        422,
        "two methods",
    )
