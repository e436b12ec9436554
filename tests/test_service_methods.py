"""Every method of the catalog through HTTP on every model of the test stack (issues 3-5):
200 with the map at the client's image size where the method applies, 422 naming the
reason where it does not — never a silently wrong map."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from schemas.methods import CATALOG
from tests.conftest import STACK_TORCHVISION
from tests.helpers import FAST, png_b64, random_image
from tests.test_service import assert_problem

pytestmark = pytest.mark.integration

MODELS = ["shapes-cnn", *STACK_TORCHVISION]
STRUCTURE = ("lrp", "deep_taylor", "deeplift")
# (model, method) -> a word the 422 must contain
UNSUPPORTED = {
    ("shapes-cnn", "cam"): "linear",
    ("vgg11", "cam"): "linear",
    ("mobilenet_v3_small", "cam"): "linear",
    **{("mobilenet_v3_small", m): "hardswish" for m in STRUCTURE},
    **{(m, "adversarial_generators"): "binary" for m in MODELS},
}


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("method", sorted(CATALOG))
def test_method_on_model(client, model, method):
    img = random_image(48, 56, seed=7)
    r = client.post(
        "/v1/explain",
        json={
            "model": model,
            "image": png_b64(img),
            "outputs": ["array"],
            "methods": [{"name": method, "params": FAST.get(method, {})}],
        },
    )
    if (model, method) in UNSUPPORTED:
        p = assert_problem(r, 422, UNSUPPORTED[(model, method)])
        assert method in p["detail"]
        return
    assert r.status_code == 200, r.text[:500]
    e = r.json()["explanations"][0]
    a = np.frombuffer(base64.b64decode(e["array"]["data"]), dtype="<f4").reshape(e["array"]["shape"])
    assert a.shape == (48, 56) and np.isfinite(a).all()


def test_models_list_supported_methods(client):
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    for (model, method), word in UNSUPPORTED.items():
        assert method not in models[model]["methods"]
        assert word in models[model]["unsupported_methods"][method].lower()
    assert "cam" in models["resnet18"]["methods"] and "lrp" in models["resnet18"]["methods"]


BAD_PARAMS = [
    ("integrated_gradients", {"steps": 0}, "steps"),
    ("integrated_gradients", {"baseline": "purple"}, "baseline"),
    ("smoothgrad", {"noise_level": -0.1}, "noise_level"),
    ("lrp", {"rule": "magic"}, "rule"),
    ("occlusion", {"window": 0}, "window"),
    ("adversarial", {"attack": "laser"}, "attack"),
]


@pytest.mark.parametrize("method,params,word", BAD_PARAMS, ids=[f"{m}-{w}" for m, _, w in BAD_PARAMS])
def test_bad_params(client, method, params, word):
    r = client.post(
        "/v1/explain",
        json={
            "model": "resnet18",
            "image": png_b64(random_image(32, 32)),
            "methods": [{"name": method, "params": params}],
        },
    )
    assert_problem(r, 422, word)


def test_same_seed_same_map(client):
    body = {
        "model": "resnet18",
        "image": png_b64(random_image(40, 40, seed=3)),
        "outputs": ["array"],
        "methods": [{"name": "smoothgrad", "params": {"samples": 4, "seed": 11}}],
    }
    a, b = (client.post("/v1/explain", json=body).json()["explanations"][0]["array"]["data"] for _ in range(2))
    assert a == b
