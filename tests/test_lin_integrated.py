"""Integrated gradients (§4.4 Eq. 7, issue 3): quadrature rules, agreement with Captum
0.9 with the same rule and baseline, completeness, baselines, chunking, progress.

Captum's riemann_trapezoid is not compared: it puts n nodes on n-1 intervals with
step sizes that sum to (n-1)/n (checked below), so it misses completeness by about
-1/n of S_c(x) - S_c(x') even on a straight path; ours is the textbook rule, checked
against the completeness axiom instead."""

from __future__ import annotations

import base64
import io
import math

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients
from captum.attr._utils.approximation_methods import approximation_parameters
from PIL import Image
from scipy.ndimage import gaussian_filter

from tests.test_lin_refs import batch, double, get_model, max_rel_diff, record
from workers.errors import Cancelled, MethodError
from workers.explain import attribute, integrated
from workers.explain.base import Progress
from workers.explain.integrated import quadrature

TOL = 1e-4


def target_score(m, x, t):
    with torch.no_grad():
        return m.module(x).gather(1, t.view(-1, 1)).squeeze(1).double()


def black(m, x):
    mean, std = m.mean_std()
    return ((0 - mean) / std).expand_as(x).clone()


# ---- quadrature ---------------------------------------------------------------------------------


def test_quadrature_nodes_and_weights():
    a, w = quadrature(4, "riemann_trapezoid")
    assert np.allclose(a, [0, 0.25, 0.5, 0.75, 1]) and np.allclose(w, [0.125, 0.25, 0.25, 0.25, 0.125])
    a, w = quadrature(4, "riemann_left")
    assert np.allclose(a, [0, 0.25, 0.5, 0.75]) and np.allclose(w, 0.25)
    a, w = quadrature(4, "riemann_right")
    assert np.allclose(a, [0.25, 0.5, 0.75, 1])
    a, w = quadrature(4, "riemann_middle")
    assert np.allclose(a, [0.125, 0.375, 0.625, 0.875])
    for rule in ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre"):
        for n in (1, 2, 7, 50):
            assert math.isclose(quadrature(n, rule)[1].sum(), 1.0, rel_tol=1e-12)
    # Gauss-Legendre with n nodes integrates polynomials of degree 2n-1 exactly: int_0^1 a^5 = 1/6
    a, w = quadrature(3, "gausslegendre")
    assert math.isclose(float((w * a**5).sum()), 1 / 6, rel_tol=1e-12)
    # the trapezoid rule integrates a linear function exactly with 1 interval
    a, w = quadrature(1, "riemann_trapezoid")
    assert math.isclose(float((w * (3 * a + 1)).sum()), 2.5)


def test_captum_trapezoid_weights_are_defective():
    """Why the trapezoid rule is not compared with Captum: its weights sum to (n-1)/n."""
    for n in (4, 50):
        steps, _ = approximation_parameters("riemann_trapezoid")
        assert math.isclose(sum(steps(n)), (n - 1) / n)
        assert math.isclose(quadrature(n, "riemann_trapezoid")[1].sum(), 1.0)


# ---- against Captum -------------------------------------------------------------------------------

CASES = (
    [("demo", r) for r in ("riemann_left", "riemann_right", "riemann_middle", "gausslegendre")]
    + [("resnet18", r) for r in ("riemann_middle", "gausslegendre")]
    + [("alexnet", "riemann_left"), ("vgg11", "riemann_middle"), ("resnet50", "riemann_right")]
)


@pytest.mark.parametrize("model_name,rule", CASES)
def test_matches_captum(model_name, rule, monkeypatch):
    """Same rule, same nodes: Captum's riemann nodes come from a float32 torch.linspace and
    differ from ours (i/n rounded once) by up to 1 float32 ulp. That is the same rule, but
    a 1e-8 move of the input can flip a ReLU whose pre-activation is ~0 (measured: 2.7e-3
    of the range on resnet50, riemann_right), so the comparison runs ours on Captum's nodes."""
    steps_c, alphas_c = approximation_parameters(rule)
    a_ours, w_ours = quadrature(6, rule)
    assert np.allclose(a_ours, alphas_c(6), rtol=0, atol=1e-7) and np.allclose(w_ours, steps_c(6), rtol=0, atol=1e-12)
    monkeypatch.setattr(integrated, "quadrature", lambda n, r: (np.asarray(alphas_c(n)), quadrature(n, r)[1]))
    m = get_model(model_name)
    heavy = model_name in ("vgg11", "resnet50")  # one sample there, to keep the runtime down
    x = batch(m, n=1 if heavy else 2)
    t = torch.tensor([3] if heavy else [3, 8])
    # one pass of all 12 images, as Captum does: the same batches give the same float rounding
    # (chunking is tested in float64 below)
    a = attribute(m, x, t, "integrated_gradients", {"steps": 6, "integration": rule, "internal_batch_size": 64})
    ref = IntegratedGradients(m.module).attribute(x, baselines=black(m, x), target=t, n_steps=6, method=rule)
    d = max_rel_diff(a.maps, ref)
    record("integrated_gradients", model_name, "Captum (same rule: left/right/middle/gausslegendre)", d)
    assert d <= TOL


def _png(h, w, seed=0) -> tuple[str, np.ndarray]:
    arr = (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode(), arr


def _baseline_ref(m, x, name):
    """The baseline built independently of the library (numpy / scipy / PIL)."""
    mean = np.array(m.entry.input.mean).reshape(1, -1, 1, 1)
    std = np.array(m.entry.input.std).reshape(1, -1, 1, 1)
    if name == "white":
        b = (1 - mean) / std * np.ones(x.shape)
    elif name == "blur":  # sigma 2 px, reflect border (scipy's 'mirror'), radius 3 sigma
        b = gaussian_filter(x.numpy().astype(np.float64), sigma=(0, 0, 2, 2), mode="mirror", truncate=3.0)
    elif name == "uniform":  # pixel U(0,1) from a generator seeded 7, one draw shared by the batch
        u = torch.rand(x.shape[1:], generator=torch.Generator().manual_seed(7)).numpy()[None]
        b = (u - mean) / std * np.ones(x.shape)
    else:  # a 40x30 PNG, resized bilinearly to the model's 64x64, [0,1], normalised
        _, arr = _png(30, 40)
        img = Image.fromarray(arr).resize((64, 64), Image.BILINEAR)
        px = np.asarray(img, dtype=np.float32).transpose(2, 0, 1)[None] / 255.0
        b = (px - mean) / std * np.ones(x.shape)
    return torch.from_numpy(np.asarray(b, dtype=np.float32))


@pytest.mark.parametrize(
    "model_name,baseline", [("resnet18", b) for b in ("white", "blur", "uniform", "image")] + [("demo", "image")]
)
def test_baselines_match_captum(model_name, baseline, monkeypatch):
    alphas_c = approximation_parameters("riemann_middle")[1]
    monkeypatch.setattr(integrated, "quadrature", lambda n, r: (np.asarray(alphas_c(n)), quadrature(n, r)[1]))
    m = get_model(model_name)
    x = batch(m)
    t = torch.tensor([1, 2])
    p = {"steps": 5, "integration": "riemann_middle", "seed": 7}
    if baseline == "image":
        p["baseline"] = _png(30, 40)[0]
    else:
        p["baseline"] = baseline
    if baseline == "blur":
        p["blur_sigma"] = 2.0
    a = attribute(m, x, t, "integrated_gradients", p)
    assert a.used_params["baseline"] == baseline  # a base64 image is echoed as "image"
    b = _baseline_ref(m, x, baseline)
    ref = IntegratedGradients(m.module).attribute(x, baselines=b, target=t, n_steps=5, method="riemann_middle")
    d = max_rel_diff(a.maps, ref)
    record("integrated_gradients", model_name, f"Captum, baseline {baseline}", d)
    assert d <= TOL
    # the metadata's baseline score is S_c of that baseline
    assert np.allclose([mm["baseline_score"] for mm in a.meta], target_score(m, b, t).numpy(), atol=1e-4)


def test_bad_baseline_image_is_a_422():
    m = get_model("demo")
    with pytest.raises(MethodError) as e:
        attribute(
            m,
            batch(m),
            0,
            "integrated_gradients",
            {"baseline": base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"x" * 40).decode()},
        )
    assert e.value.status == 422 and "baseline" in e.value.detail


def test_image_baseline_limit_is_the_callers_not_the_environment(monkeypatch):
    """The image baseline is decoded under attribute()'s max_image_pixels (the worker passes its
    setting); the explainer never reads WHITEBOX_MAX_IMAGE_PIXELS itself."""
    m = get_model("demo")
    p = {"baseline": _png(30, 40)[0], "steps": 2}
    monkeypatch.setenv("WHITEBOX_MAX_IMAGE_PIXELS", "10")
    assert attribute(m, batch(m), 0, "integrated_gradients", p).used_params["baseline"] == "image"
    with pytest.raises(MethodError) as e:
        attribute(m, batch(m), 0, "integrated_gradients", p, max_image_pixels=30 * 40 - 1)
    assert e.value.status == 422 and "baseline image" in e.value.detail
    smooth = {**p, "smoothgrad": {"samples": 2}}  # the limit reaches the noisy copies' calls too
    with pytest.raises(MethodError):
        attribute(m, batch(m), 0, "integrated_gradients", smooth, max_image_pixels=30 * 40 - 1)


# ---- axioms and metadata ----------------------------------------------------------------------


def test_completeness_64_trapezoid_steps_resnet18():
    """Target: per sample, the class with the largest |S_c(x) - S_c(x')|. On seeded random
    weights many classes have S_c(x) ~ S_c(x') (0.03 against path variations of ~1), and
    then no 64-step rule bounds the error relative to that tiny difference (measured in
    float64 for such a class: -20 % at 64 steps, +1 % at 256, -0.5 % at 1024)."""
    m = get_model("resnet18")
    x = batch(m, seed=11)
    with torch.no_grad():
        t = (m.module(x) - m.module(black(m, x))).abs().argmax(1)
    a = attribute(m, x, t, "integrated_gradients", {"steps": 64, "internal_batch_size": 130})
    diff = target_score(m, x, t) - target_score(m, black(m, x), t)
    total = a.maps.double().flatten(1).sum(1)
    err = total - diff
    for i in range(2):
        record(
            "integrated_gradients",
            "resnet18",
            "completeness: abs(error) / abs(S(x) - S(x')), 64 trapezoid steps",
            float(abs(err[i]) / abs(diff[i])),
        )
        assert abs(err[i]) <= 0.01 * abs(diff[i])
        # the metadata reports exactly this error
        assert math.isclose(a.meta[i]["completeness_error"], float(err[i]), rel_tol=1e-3, abs_tol=1e-5)
        assert math.isclose(a.meta[i]["relative_error"], float(err[i] / abs(diff[i])), rel_tol=1e-3, abs_tol=1e-6)
        assert math.isclose(a.meta[i]["score"], float(target_score(m, x, t)[i]), rel_tol=1e-5, abs_tol=1e-6)


def test_completeness_demo_model_on_shapes():
    """The trained demo model on 8 images of its data set, target = the predicted class.
    Measured (16 images): at 64 trapezoid steps the relative completeness error has median
    0.6 %, mean 0.8 %, max 2.4 % (5 of 16 above 1 %: the integrand of a ReLU net jumps at
    every kink crossed on the path, and a node that lands within float rounding of a kink
    flips with the batch composition); at 128 steps max 0.7-1.0 %, at 256 steps max 0.3 %.
    So: mean <= 1 % at 64 steps and every sample <= 1 % at 256 steps."""
    from workers.training.shapes import generate

    m = get_model("demo")
    if m.entry.weights is None:
        pytest.skip("the demo model's trained weights (workers/models/weights/shapes-cnn.safetensors) are not there")
    imgs, _, _ = generate(8, seed=2024)
    mean, std = m.mean_std()
    x = (torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.no_grad():
        t = m.module(x).argmax(1)
    rel = {}
    for steps in (64, 256):
        a = attribute(m, x, t, "integrated_gradients", {"steps": steps, "internal_batch_size": 520})
        diff = target_score(m, x, t) - target_score(m, black(m, x), t)
        rel[steps] = ((a.maps.double().flatten(1).sum(1) - diff).abs() / diff.abs()).numpy()
        assert np.allclose([abs(mm["relative_error"]) for mm in a.meta], rel[steps], rtol=1e-3, atol=1e-6)
    record(
        "integrated_gradients",
        "demo",
        "completeness: mean abs(error) / abs(S(x) - S(x')), 64 trapezoid steps",
        float(rel[64].mean()),
    )
    record(
        "integrated_gradients",
        "demo",
        "completeness: max abs(error) / abs(S(x) - S(x')), 256 trapezoid steps",
        float(rel[256].max()),
    )
    assert rel[64].mean() <= 0.01
    assert rel[256].max() <= 0.01


def test_trapezoid_converges_faster_than_left():
    m = get_model("demo")
    x = batch(m, n=1)
    errs = {
        r: abs(attribute(m, x, 2, "integrated_gradients", {"steps": 16, "integration": r}).meta[0]["relative_error"])
        for r in ("riemann_left", "riemann_trapezoid")
    }
    assert errs["riemann_trapezoid"] < errs["riemann_left"]


# ---- chunking, determinism, progress --------------------------------------------------------------


def test_internal_batch_size_does_not_change_the_map():
    m = double(get_model("demo"))
    x = batch(m, n=3)
    t = torch.tensor([0, 1, 2])
    maps = [
        attribute(m, x.double(), t, "integrated_gradients", {"steps": 7, "internal_batch_size": b}).maps
        for b in (1, 4, 64)
    ]
    for other in maps[1:]:
        assert max_rel_diff(other, maps[0]) <= 1e-10


def test_uniform_baseline_is_seeded_and_batch_independent():
    m = double(get_model("demo"))
    x = batch(m, n=2).double()
    t = torch.tensor([4, 6])
    p = {"steps": 4, "baseline": "uniform", "seed": 3}
    a = attribute(m, x, t, "integrated_gradients", p).maps
    assert torch.equal(a, attribute(m, x, t, "integrated_gradients", p).maps)
    alone = attribute(m, x[1:], t[1:], "integrated_gradients", p).maps
    assert max_rel_diff(alone[0], a[1]) <= 1e-10
    other = attribute(m, x, t, "integrated_gradients", {**p, "seed": 4}).maps
    assert max_rel_diff(other, a) > 1e-3


def test_progress_is_reported_per_chunk_and_cancel_stops():
    m = get_model("demo")
    x = batch(m, n=2)
    seen = []
    attribute(
        m, x, 0, "integrated_gradients", {"steps": 9, "internal_batch_size": 4}, progress=Progress(report=seen.append)
    )
    assert len(seen) == math.ceil(2 * 10 / 4)  # trapezoid: 10 nodes x 2 samples, 4 per pass
    assert seen == sorted(seen) and seen[-1] == 1.0 and seen[0] > 0
    calls = []

    def cancelled():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled):
        attribute(
            m,
            x,
            0,
            "integrated_gradients",
            {"steps": 50, "internal_batch_size": 4},
            progress=Progress(cancelled=cancelled),
        )
    assert len(calls) == 3
