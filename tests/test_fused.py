"""Fused multi-method passes (issue 7): one forward, one backward per rule, and the same
maps as each method alone (the single-method implementations are tested against Captum
and by hand in their own test files); FEM and CAM stop the forward at their layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from schemas.api import ExplainRequest
from tests.helpers import demo_model, max_rel_diff, random_image, seeded_torchvision
from workers.explain import attribute
from workers.explain.fused import FusedPass, fused_attribute, plan_call
from workers.explain.gradients import layer_output
from workers.serving.pipeline import Item, run_batch
from workers.serving.render import decode_array

SIX = ["saliency", "deconvnet", "guided_backprop", "gradcam", "guided_gradcam", "fem"]
TOL = 1e-5


@pytest.fixture(scope="module")
def models():
    return {
        "demo": demo_model(),
        "resnet18": seeded_torchvision("resnet18", size=64, seed=3),
        "vgg11": seeded_torchvision("vgg11", size=64, seed=4),
    }


def _inputs(m, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, m.channels, *m.input_size), generator=g)
    return x, torch.tensor([1, 7, 3, 0][:n])


@pytest.mark.parametrize("name", ["demo", "resnet18", "vgg11"])
def test_fused_equals_single_methods(models, name):
    m = models[name]
    x, t = _inputs(m)
    layers = list(m.layers)
    calls = [(n, None) for n in SIX] + [
        ("fem", {"k": 0.5}),
        ("gradcam", {"layer": layers[len(layers) // 2]}),
        ("guided_gradcam", {"layer": layers[len(layers) // 2]}),
    ]
    if name == "resnet18":
        calls.append(("cam", None))  # the only one of the three with a GAP -> linear head
    logits, atts = fused_attribute(m, x, t, calls)
    with torch.no_grad():
        np.testing.assert_allclose(logits.numpy(), m.module(x).numpy(), rtol=1e-5, atol=1e-5)
    for (method, params), a in zip(calls, atts):
        ref = attribute(m, x, t, method, params)
        assert a.maps.shape == ref.maps.shape
        assert a.used_params == ref.used_params
        if params is None:
            assert float(ref.maps.abs().max()) > 0, method  # a non-trivial comparison
        assert max_rel_diff(a.maps, ref.maps) <= TOL, (name, method, params)


def test_guided_gradcam_is_guided_backprop_times_gradcam(models):
    """guided_gradcam (one forward, two backwards) against its definition from the two
    single-pass methods: guided backprop times the bilinearly upsampled Grad-CAM."""
    import torch.nn.functional as F

    for name in ("demo", "resnet18"):
        m = models[name]
        x, t = _inputs(m)
        gb = attribute(m, x, t, "guided_backprop").maps
        cam = attribute(m, x, t, "gradcam").maps  # already upsampled bilinearly to the input
        ggc = attribute(m, x, t, "guided_gradcam").maps
        assert max_rel_diff(ggc, gb * cam) <= TOL
        assert cam.shape[1] == 1 and F.relu(cam).equal(cam)


def test_modified_rules_differ_from_the_plain_gradient(models):
    """The switch really changes the backward: guided != deconv != plain on the same graph."""
    m = models["vgg11"]
    x, t = _inputs(m, n=1)
    _, (sal, gb, dc) = fused_attribute(m, x, t, [("saliency", None), ("guided_backprop", None), ("deconvnet", None)])
    assert max_rel_diff(gb.maps, sal.maps) > 1e-2
    assert max_rel_diff(dc.maps, gb.maps) > 1e-2
    assert max_rel_diff(dc.maps, sal.maps) > 1e-2


def test_layer_called_twice_uses_its_last_call(models):
    """ResNet's block.relu module is called twice (before and after the addition): Grad-CAM,
    FEM and CAM all use the last call, fused or alone, and FEM/CAM stop the forward there."""
    m = models["resnet18"]
    x, t = _inputs(m)
    layer = "layer4.1.relu"
    outs = []
    h = m.module_at(layer).register_forward_hook(lambda mod, i, o: outs.append(o.detach().clone()))
    with torch.no_grad():
        m.module(x)
    h.remove()
    assert len(outs) == 2
    with torch.inference_mode():
        a = layer_output(m, layer, x)
    np.testing.assert_array_equal(a.numpy(), outs[-1].numpy())
    calls = [("gradcam", {"layer": layer}), ("fem", {"layer": layer})]
    _, atts = fused_attribute(m, x, t, calls)
    for (method, params), att in zip(calls, atts):
        assert max_rel_diff(att.maps, attribute(m, x, t, method, params).maps) <= TOL


def test_layer_output_stops_the_forward(models):
    m = models["demo"]
    seen = []
    h = m.module.classifier.register_forward_hook(lambda *a: seen.append(1))
    try:
        x, t = _inputs(m)
        attribute(m, x, t, "fem")
    finally:
        h.remove()
    assert seen == []


def test_unfusable_calls_fall_back(models):
    m = models["demo"]
    assert plan_call(m, "integrated_gradients", None) is None
    assert plan_call(m, "saliency", {"smoothgrad": {"samples": 2}}) is None
    assert plan_call(m, "cam", None) is None  # not applicable: global max pool + MLP head
    assert plan_call(m, "gradcam", {"layer": "nope"}) is None
    assert plan_call(m, "gradcam", None).layer == "features.10"


def test_no_grad_state_or_hooks_left(models):
    m = models["resnet18"]
    x, t = _inputs(m)
    fp = FusedPass(m, x, [plan_call(m, n, None) for n in SIX + ["cam"]])
    fp.forward()
    fp.explain(t)
    assert not any(p.requires_grad for p in m.module.parameters())
    assert all(p.grad is None for p in m.module.parameters())
    assert not any(mod._forward_hooks for mod in m.module.modules())


def _request(**kw) -> ExplainRequest:
    return ExplainRequest.model_validate({"model": "m", "image": "unused", **kw})


def test_pipeline_fused_equals_unfused(models):
    """run_batch's fused path against the one-attribute()-per-call path, with a mixed batch:
    different method sets, a non-fusable method, the SmoothGrad modifier, a bad target."""
    m = models["resnet18"]
    imgs = [Image.fromarray(random_image(64, 64 + 8 * i, seed=i)) for i in range(4)]
    reqs = [
        _request(methods=SIX, outputs=["array"], normalize="none", target=2),
        _request(methods=SIX, outputs=["array"], normalize="none"),
        _request(
            methods=[
                "cam",
                "fem",
                {"name": "integrated_gradients", "params": {"steps": 4}},
                {"name": "saliency", "params": {"smoothgrad": {"samples": 2}}},
            ],
            outputs=["array"],
            normalize="none",
            target=5,
        ),
        _request(methods=["saliency"], outputs=["array"], target=99),
    ]
    targets = [2, None, 5, 99]  # as the gateway resolves them (99: a class the model lacks)
    fused = [Item(request=r, image=i, target_index=t) for r, i, t in zip(reqs, imgs, targets)]
    plain = [Item(request=r, image=i, target_index=t) for r, i, t in zip(reqs, imgs, targets)]
    run_batch(m, fused)
    run_batch(m, plain, fuse=False)
    assert fused[3].result is None and fused[3].error.status == 422
    for f, p in zip(fused[:3], plain[:3]):
        assert f.result.prediction.class_index == p.result.prediction.class_index
        assert f.result.target == p.result.target
        for ef, ep in zip(f.result.explanations, p.result.explanations, strict=True):
            assert ef.method == ep.method and ef.params == ep.params
            a, b = decode_array(ef.array), decode_array(ep.array)
            assert max_rel_diff(torch.tensor(a), torch.tensor(b)) <= TOL, ef.method
