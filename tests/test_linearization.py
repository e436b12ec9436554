"""The linearization family (issue 3): parameter schemas, the per-call rectifier rules
(DeconvNet, guided backprop) against Captum and hand-computed backward passes,
guided Grad-CAM against Captum, CAM's structural check and the CAM = Grad-CAM axiom.

Integrated gradients: tests/test_lin_integrated.py; SmoothGrad: tests/test_lin_smoothgrad.py;
the models and the one-ReLU-per-call reference: tests/test_lin_refs.py."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from captum.attr import Deconvolution, GuidedBackprop, GuidedGradCam, LayerGradCam
from PIL import Image
from pydantic import ValidationError

from schemas.api import ExplainRequest
from schemas.methods import CATALOG, parse_params
from tests.test_lin_refs import MODELS, batch, get_model, max_rel_diff, record, reference_net
from workers.errors import MethodError
from workers.explain import applicability, attribute
from workers.explain.base import Context
from workers.explain.cam import cam_at
from workers.explain.gradients import gradcam_at
from workers.explain.rules.relu import rectifier_mode
from workers.serving.pipeline import Item, run_batch

TOL = 1e-4  # of the reference's range (issue 3)
NEW = ("deconvnet", "guided_backprop", "integrated_gradients", "smoothgrad", "guided_gradcam", "cam")


# ---- schemas ----------------------------------------------------------------------------------


def _png_b64(h=8, w=8) -> str:
    buf = io.BytesIO()
    Image.fromarray((np.arange(h * w * 3).reshape(h, w, 3) % 256).astype(np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize(
    "name,params",
    [
        ("integrated_gradients", {"steps": 0}),
        ("integrated_gradients", {"baseline": "grey"}),
        ("integrated_gradients", {"baseline": "aGVsbG8gd29ybGQ="}),  # base64, but not a PNG/JPEG
        ("integrated_gradients", {"integration": "simpson"}),
        ("integrated_gradients", {"internal_batch_size": 0}),
        ("smoothgrad", {"noise_level": -0.1}),
        ("smoothgrad", {"samples": 0}),
        ("smoothgrad", {"base": "gradcam"}),  # not a gradient method
        ("smoothgrad", {"base": "smoothgrad"}),
        ("smoothgrad", {"base": "integrated_gradients", "base_params": {"steps": 0}}),
        ("smoothgrad", {"base": "saliency", "base_params": {"smoothgrad": {"samples": 2}}}),
        ("saliency", {"smoothgrad": {"noise_level": -1}}),
        ("guided_backprop", {"smoothgrad": {"samples": 0}}),
        ("deconvnet", {"rule": "x"}),
        ("cam", {"layer": 3}),
    ],
)
def test_bad_params_are_rejected(name, params):
    with pytest.raises(ValidationError):
        parse_params(name, params)


def test_good_params_and_defaults():
    ig = parse_params("integrated_gradients", {})
    assert (ig.steps, ig.baseline, ig.integration, ig.seed) == (50, "black", "riemann_trapezoid", 0)
    for b in ("black", "white", "blur", "uniform", _png_b64(), "data:image/png;base64," + _png_b64()):
        parse_params("integrated_gradients", {"baseline": b})
    sg = parse_params("smoothgrad", {})
    assert (sg.samples, sg.noise_level, sg.base, sg.seed) == (25, 0.15, "saliency", 0)
    parse_params("smoothgrad", {"base": "integrated_gradients", "base_params": {"steps": 4, "baseline": "white"}})
    parse_params("integrated_gradients", {"smoothgrad": {"samples": 3}})


def test_catalog_declares_the_family():
    for name in NEW + ("saliency", "gradcam"):
        assert CATALOG[name].family == "linearization"
        CATALOG[name].describe()  # JSON schema renders
    for name in ("saliency", "deconvnet", "guided_backprop", "integrated_gradients", "guided_gradcam"):
        assert CATALOG[name].gradient_based
    assert CATALOG["smoothgrad"].stochastic
    for name in ("deconvnet", "guided_backprop"):
        notes = " ".join(CATALOG[name].notes)
        assert "ReLU6" in notes and "LeakyReLU" in notes and "plain gradient" in notes


# ---- the rectifier rules on hand-computed backward passes ---------------------------------------


class TwoLayer(nn.Module):
    def __init__(self, act1, act2):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = nn.Parameter(torch.randn(6, 5, generator=g), requires_grad=False)
        self.w2 = nn.Parameter(torch.randn(6, 6, generator=g), requires_grad=False)
        self.w3 = nn.Parameter(torch.randn(3, 6, generator=g), requires_grad=False)
        self.act1, self.act2 = act1, act2

    def forward(self, x):
        return self.act2(self.act1(x @ self.w1.T) @ self.w2.T) @ self.w3.T


def _deriv(kind, h):
    """f'(h) written out per activation (0 at the kinks, as autograd)."""
    name, p = kind
    if name == "relu":
        return (h > 0).double()
    if name == "relu6":
        return ((h > 0) & (h < p)).double()
    if name == "leaky":
        return torch.where(h > 0, 1.0, p).double()
    if name == "hardtanh":  # clamp to [-1, 1]: not a rectifier, plain gradient
        return ((h > -1) & (h < 1)).double()
    if name == "elu":
        return torch.where(h > 0, 1.0, torch.exp(h)).double()
    raise KeyError(name)


def _fwd(kind, h):
    name, p = kind
    return {
        "relu": lambda: h.clamp(min=0),
        "relu6": lambda: h.clamp(0, p),
        "hardtanh": lambda: h.clamp(-1, 1),
        "leaky": lambda: torch.where(h > 0, h, p * h),
        "elu": lambda: torch.where(h > 0, h, torch.exp(h) - 1),
    }[name]()


RECTIFIERS = {"relu", "relu6", "leaky"}


def hand_gradient(net, kinds, x, c, rule):
    """The backward pass written out with the weight matrices: at a rectifier
    guided = f'(h) max(g, 0), deconv = max(g, 0); any other activation passes f'(h) g."""
    w1, w2, w3 = (w.double() for w in (net.w1, net.w2, net.w3))
    h1 = x.double() @ w1.T
    h2 = _fwd(kinds[0], h1) @ w2.T

    def back(kind, h, g):
        if kind[0] not in RECTIFIERS or rule == "plain":
            return _deriv(kind, h) * g
        if rule == "deconv":
            return g.clamp(min=0)
        return _deriv(kind, h) * g.clamp(min=0)

    g2 = back(kinds[1], h2, w3[c].expand_as(h2))
    g1 = back(kinds[0], h1, g2 @ w2)
    return g1 @ w1


ACTS = [
    (("relu", 0), lambda: nn.ReLU(inplace=True)),
    (("relu", 0), lambda: lambda t: torch.relu_(t * 1)),
    (("relu", 0), lambda: lambda t: F.relu(t, inplace=False)),
    (("relu", 0), lambda: lambda t: t.relu()),
    (("relu6", 6.0), lambda: nn.ReLU6(inplace=True)),
    (("relu6", 6.0), lambda: F.relu6),
    (("relu6", 2.5), lambda: nn.Hardtanh(0.0, 2.5)),
    (("leaky", 0.2), lambda: nn.LeakyReLU(0.2, inplace=True)),
    (("leaky", 0.01), lambda: F.leaky_relu),
    (("hardtanh", 0), lambda: nn.Hardtanh()),
    (("elu", 0), lambda: nn.ELU()),
]


@pytest.mark.parametrize("rule", ["guided", "deconv"])
@pytest.mark.parametrize("i", range(len(ACTS)))
def test_rules_match_hand_computed_backward(rule, i):
    kind, make = ACTS[i]
    other = (("relu", 0), lambda: nn.ReLU())
    for kinds, acts in (((kind, other[0]), (make(), other[1]())), ((other[0], kind), (other[1](), make()))):
        net = TwoLayer(*acts)
        x = 3 * torch.randn(4, 5, generator=torch.Generator().manual_seed(i))
        xi = x.clone().requires_grad_(True)
        c = torch.tensor([0, 1, 2, 1])
        with rectifier_mode(guided=rule == "guided"):
            y = net(xi)
        assert torch.allclose(y, net(x), atol=1e-6)  # the forward values are the network's own
        (g,) = torch.autograd.grad(y.gather(1, c.view(-1, 1)).sum(), xi)
        ref = torch.stack([hand_gradient(net, kinds, x[j : j + 1], int(c[j]), rule)[0] for j in range(4)])
        assert torch.allclose(g.double(), ref, atol=1e-5), (rule, kinds)
        plain = torch.stack([hand_gradient(net, kinds, x[j : j + 1], int(c[j]), "plain")[0] for j in range(4)])
        if kind[0] in RECTIFIERS:
            assert (ref - plain).abs().max() > 1e-4  # the case does exercise the rule


def test_inplace_calls_keep_forward_values_on_vgg():
    """VGG's ReLUs are in-place: the rectified value must still land in the caller's tensor."""
    m = get_model("vgg11")
    x = batch(m)
    with torch.no_grad():
        ref = m.module(x)
    with torch.enable_grad(), rectifier_mode(guided=True):
        out = m.module(x.clone().requires_grad_(True))
    assert torch.allclose(out, ref, atol=1e-6)


# ---- DeconvNet and guided backprop against Captum -------------------------------------------------

CAPTUM = {"guided_backprop": GuidedBackprop, "deconvnet": Deconvolution}


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet"])
def test_rules_match_captum(model_name, method):
    """Against Captum on the original net and, for the ResNets (one ReLU module called two or
    three times per block), also against Captum on the net rewritten with one fresh nn.ReLU per
    call, which is right by construction. Measured: Captum 0.9's hooks do fire once per call of
    a reused module, so both agree on these nets; they differ on DenseNet (test below)."""
    m = get_model(model_name)
    x = batch(m)
    t = torch.tensor([1, 7])
    ours = attribute(m, x, t, method).maps
    if model_name.startswith("resnet"):
        ref = CAPTUM[method](reference_net(model_name)).attribute(x.clone().requires_grad_(True), target=t)
        d = max_rel_diff(ours, ref)
        record(method, model_name, "Captum on one-ReLU-per-call rewrite", d)
        assert d <= TOL
    cap = CAPTUM[method](m.module).attribute(x.clone().requires_grad_(True), target=t)
    d = max_rel_diff(ours, cap)
    record(method, model_name, "Captum", d)
    assert d <= TOL


def test_functional_relus_densenet():
    """DenseNet calls F.relu in forward: Captum's module hooks miss that call (its maps are
    wrong); the one-ReLU-per-call rewrite is the reference. A small DenseNet built by
    torchvision's own DenseNet class (same forward code as densenet121)."""
    m = get_model("densenet_small")
    x = batch(m, n=1)
    t = torch.tensor([4])
    for method, C in CAPTUM.items():
        ours = attribute(m, x, t, method).maps
        d = max_rel_diff(ours, C(reference_net("densenet_small")).attribute(x.clone().requires_grad_(True), target=t))
        record(method, "densenet_small", "Captum on one-ReLU-per-call rewrite", d)
        assert d <= TOL
        wrong = max_rel_diff(C(m.module).attribute(x.clone().requires_grad_(True), target=t), ours)
        record(method, "densenet_small", "(Captum on the original: wrong)", wrong)
        assert wrong > 1e-2


# ---- guided Grad-CAM -----------------------------------------------------------------------------


@pytest.mark.parametrize("model_name", MODELS)
def test_guided_gradcam_matches_captum(model_name):
    m = get_model(model_name)
    x = batch(m)
    t = torch.tensor([2, 5])
    a = attribute(m, x, t, "guided_gradcam")
    layer = a.used_params["layer"]
    assert layer == (m.entry.target_layer or m.default_layer)
    ref = GuidedGradCam(m.module, m.module_at(layer)).attribute(
        x.clone().requires_grad_(True), target=t, interpolate_mode="bilinear"
    )
    d = max_rel_diff(a.maps, ref)
    record("guided_gradcam", model_name, "Captum", d)
    assert d <= TOL
    if model_name != "resnet18":
        return
    # built another way: guided backprop on the rewrite x Captum's Grad-CAM upsampled bilinearly
    gb = GuidedBackprop(reference_net(model_name)).attribute(x.clone().requires_grad_(True), target=t)
    gc = LayerGradCam(m.module, m.module_at(layer)).attribute(x, target=t, relu_attributions=True)
    gc = F.interpolate(gc, size=x.shape[-2:], mode="bilinear", align_corners=False)
    assert max_rel_diff(a.maps, gb * gc) <= TOL


def test_guided_gradcam_layer_param():
    m = get_model("resnet18")
    x = batch(m)
    a = attribute(m, x, 3, "guided_gradcam", {"layer": "layer3"})
    assert a.used_params == {"layer": "layer3"}
    ref = GuidedGradCam(m.module, m.module.layer3).attribute(
        x.clone().requires_grad_(True), target=3, interpolate_mode="bilinear"
    )
    assert max_rel_diff(a.maps, ref) <= TOL
    with pytest.raises(MethodError, match="unknown layer"):
        attribute(m, x, 3, "guided_gradcam", {"layer": "layer9"})


# ---- CAM ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_name", ["resnet18", "resnet50"])
def test_cam_formula_and_gradcam_axiom(model_name):
    m = get_model(model_name)
    x = batch(m, n=3)
    t = torch.tensor([0, 4, 9])
    a = attribute(m, x, t, "cam")
    assert a.used_params == {"layer": "layer4"} and a.maps.shape == (3, 1, 64, 64)
    # CAM written out: activations of layer4 by a forward hook, weights of fc
    acts = {}
    h = m.module.layer4.register_forward_hook(lambda mod, i, o: acts.setdefault("a", o.detach().clone()))
    with torch.no_grad():
        logits = m.module(x)
    h.remove()
    A = acts["a"].double()
    W, b = m.module.fc.weight.double(), m.module.fc.bias.double()
    ref = torch.stack([(W[c].view(-1, 1, 1) * A[i]).sum(0) for i, c in enumerate(t.tolist())])[:, None]
    assert torch.allclose(cam_at(Context(m, x, t, parse_params("cam", {})), "layer4").double(), ref, atol=1e-5)
    up = F.interpolate(ref, size=(64, 64), mode="bilinear", align_corners=False)
    assert max_rel_diff(a.maps.double(), up) <= 1e-5
    # its spatial mean plus the bias is the logit
    assert torch.allclose(
        ref.mean(dim=(1, 2, 3)) + b[t], logits.gather(1, t.view(-1, 1)).squeeze(1).double(), atol=1e-4
    )
    # axiom: Grad-CAM = ReLU(CAM) / (h w), a positive factor, at the layer's resolution
    gc = gradcam_at(Context(m, x, t, parse_params("gradcam", {})), "layer4").double()
    z = A.shape[-1] * A.shape[-2]
    record("cam", model_name, "axiom: Grad-CAM x (h w) = ReLU(CAM)", max_rel_diff(gc * z, ref.clamp(min=0)))
    assert torch.allclose(gc * z, ref.clamp(min=0), atol=1e-5 * float(ref.abs().max()))
    assert gc.max() > 0
    # and on the maps the service returns, up to that factor (ReLU before upsampling for Grad-CAM)
    g = attribute(m, x, t, "gradcam").maps.double()
    cam_relu_up = F.interpolate(ref.clamp(min=0), size=(64, 64), mode="bilinear", align_corners=False)
    assert max_rel_diff(g * z, cam_relu_up) <= 1e-5


@pytest.mark.parametrize(
    "model_name,layer", [("vgg11", "features.19"), ("alexnet", "features.11"), ("demo", "features.10")]
)
def test_cam_refused_without_gap_linear_head(model_name, layer):
    m = get_model(model_name)
    reason = applicability(m)["cam"]
    assert reason is not None and repr(layer) in reason and "global average pool" in reason
    with pytest.raises(MethodError, match="global average pool") as e:
        attribute(m, batch(m), 0, "cam")
    assert repr(layer) in e.value.detail and e.value.status == 422


def test_cam_layer_must_feed_the_head():
    m = get_model("resnet18")
    assert applicability(m)["cam"] is None
    with pytest.raises(MethodError, match="'layer3'"):
        attribute(m, batch(m), 0, "cam", {"layer": "layer3"})
    a = attribute(m, batch(m), 0, "cam", {"layer": "layer4.1"})  # the same tensor as layer4
    assert torch.allclose(a.maps, attribute(m, batch(m), 0, "cam").maps)


class _Toy(nn.Module):
    """conv -> (ReLU) -> functional GAP -> (something) -> linear."""

    def __init__(self, between: nn.Module):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.between, self.fc = nn.Conv2d(3, 8, 3, padding=1), between, nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.between(torch.mean(self.conv(x), dim=(2, 3))))


def _toy_model(between):
    from schemas.registry import ModelEntry
    from workers.models.loading import load_model

    entry = ModelEntry(
        name="toy", architecture="toy", num_classes=4, input={"size": [16, 16], "mean": [0.5] * 3, "std": [0.25] * 3}
    )
    return load_model(entry, module=_Toy(between))


def test_cam_detects_functional_gap_and_refuses_anything_between():
    ok = _toy_model(nn.Flatten())
    assert applicability(ok)["cam"] is None
    x = batch(ok)
    a = attribute(ok, x, 1, "cam")
    assert a.used_params == {"layer": "conv"}
    with torch.no_grad():
        A = ok.module.conv(x)
    ref = (ok.module.fc.weight[1].view(1, -1, 1, 1) * A).sum(1, keepdim=True)
    assert torch.allclose(a.maps, ref, atol=1e-5)  # 16x16 layer: no upsampling
    bad = _toy_model(nn.Tanh())
    reason = applicability(bad)["cam"]
    assert reason and "'conv'" in reason and "'fc'" in reason


# ---- through the worker's pipeline (decode -> attribute -> reduce -> resize) ------------------------


def test_pipeline_returns_maps_at_the_client_image_size():
    m = get_model("resnet18")
    rng = np.random.default_rng(0)
    img = Image.fromarray((rng.random((45, 70, 3)) * 255).astype(np.uint8))
    methods = [
        {"name": "deconvnet"},
        {"name": "guided_backprop"},
        {"name": "guided_gradcam"},
        {"name": "cam"},
        {"name": "integrated_gradients", "params": {"steps": 4, "baseline": _png_b64(20, 30)}},
        {"name": "smoothgrad", "params": {"samples": 2, "base": "guided_backprop"}},
        {"name": "saliency", "params": {"smoothgrad": {"samples": 2}}},
    ]
    req = ExplainRequest.model_validate(
        {"model": "resnet18", "image": "unused", "methods": methods, "outputs": ["array"], "target": 3}
    )
    it = Item(request=req, image=img, target_index=3)
    run_batch(m, [it])
    assert it.error is None, it.error
    ex = it.result.explanations
    assert [e.method for e in ex] == [c["name"] for c in methods]
    for e in ex:
        assert e.array.shape == [45, 70], e.method
    ig = ex[4]
    assert ig.params["baseline"] == "image" and "completeness_error" in ig.metadata
    assert ex[3].params["layer"] == "layer4"
