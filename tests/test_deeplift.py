"""DeepLIFT (§5.2): RevealCancel against numbers worked out from Eqs. 23-25, Rescale
against an explicit matrix formula and against Captum's DeepLift (where Captum itself
satisfies summation-to-delta), and summation-to-delta (Eq. 19) on every supported model.

Measure: ``pytest tests/test_deeplift.py -s`` prints one line per model."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from tests.structure_support import image_batch, max_rel_diff, model, wrap
from workers.explain import attribute
from workers.explain.baselines import baseline
from workers.explain.deeplift import deeplift

SUMMATION_TOL = 1e-4


def g(v: float) -> float:  # the ReLU
    return max(0.0, v)


def reveal_cancel_by_hand(y0: float, dpos: float, dneg: float) -> tuple[float, float]:
    """Eqs. 23-25 for one ReLU neuron: (m+, m-)."""
    dz_pos = 0.5 * (g(y0 + dpos) - g(y0)) + 0.5 * (g(y0 + dpos + dneg) - g(y0 + dneg))  # Eq. 23
    dz_neg = 0.5 * (g(y0 + dneg) - g(y0)) + 0.5 * (g(y0 + dneg + dpos) - g(y0 + dpos))  # Eq. 24
    return dz_pos / dpos, dz_neg / dneg  # Eq. 25


def two_layer_net(w1, b1, w2, b2) -> nn.Module:
    net = nn.Sequential(nn.Flatten(), nn.Linear(len(w1[0]), len(w1)), nn.ReLU(), nn.Linear(len(w1), 1))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor(w1))
        net[1].bias.copy_(torch.tensor(b1))
        net[3].weight.copy_(torch.tensor([w2]))
        net[3].bias.copy_(torch.tensor([b2]))
    return net.eval().requires_grad_(False)


def test_reveal_cancel_matches_hand_computed_two_layer_net():
    w1, b1, w2, b2 = [[1.0, -2.0, 1.0], [2.0, 1.0, -3.0]], [0.5, -1.0], [1.0, 2.0], 0.2
    xs, x0s = [2.0, 1.0, 1.0], [0.0, 0.0, 0.0]
    net = two_layer_net(w1, b1, w2, b2)
    dx = [a - b for a, b in zip(xs, x0s)]
    expected = [0.0, 0.0, 0.0]
    for j in range(2):
        contrib = [w1[j][i] * dx[i] for i in range(3)]
        y0 = sum(w1[j][i] * x0s[i] for i in range(3)) + b1[j]
        mp, mn = reveal_cancel_by_hand(y0, sum(c for c in contrib if c > 0), sum(c for c in contrib if c < 0))
        for i in range(3):
            expected[i] += contrib[i] * (mp if contrib[i] > 0 else mn) * w2[j]
    # worked out: neuron 1 has y0 = 0.5, dy+ = 3, dy- = -2 -> dz+ = 2.25, dz- = -1.25, m+ = 0.75, m- = 0.625;
    # neuron 2 has y0 = -1, dy+ = 5, dy- = -3 -> dz+ = 2.5, dz- = -1.5, m+ = m- = 0.5
    assert expected == pytest.approx([5.5, -0.25, -2.25])
    x = torch.tensor(xs).view(1, 1, 1, 3)
    x0 = torch.tensor(x0s).view(1, 1, 1, 3)
    attr, meta = deeplift(net, x, x0, torch.tensor([0]), "reveal_cancel")
    assert attr.flatten().tolist() == pytest.approx(expected, abs=1e-6)
    assert meta[0]["delta"] == pytest.approx(3.0, abs=1e-6)
    assert meta[0]["attribution_sum"] == pytest.approx(3.0, abs=1e-6)
    # Rescale on the same net differs (m = dz/dy = 1 and 0.5): 2*1*1 + 4*0.5*2 = 6, -2 + 1 = -1, 1 - 3 = -2
    resc, _ = deeplift(net, x, x0, torch.tensor([0]), "rescale")
    assert resc.flatten().tolist() == pytest.approx([6.0, -1.0, -2.0], abs=1e-6)


def test_rescale_matches_explicit_formula():
    """One hidden ReLU layer: attr_i = dx_i * sum_j W_ji (dz_j / dy_j) v_j (Linear and Rescale rules)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 20), nn.ReLU(), nn.Linear(20, 4)).eval().requires_grad_(False)
    x, x0 = torch.randn(3, 1, 3, 4), torch.randn(3, 1, 3, 4)
    t = torch.tensor([0, 2, 3])
    attr, meta = deeplift(net, x, x0, t, "rescale")
    W, b, V = net[1].weight.double(), net[1].bias.double(), net[3].weight.double()
    for k in range(3):
        xa, xb = x[k].flatten().double(), x0[k].flatten().double()
        y, y0 = W @ xa + b, W @ xb + b
        m = (y.clamp(min=0) - y0.clamp(min=0)) / (y - y0)
        ref = (xa - xb) * (W.T @ (m * V[t[k]]))
        assert torch.allclose(attr[k].flatten().double(), ref, atol=1e-5, rtol=1e-4)
        assert abs(meta[k]["summation_to_delta_error"]) < 1e-5


def _pool_net(kernel, stride) -> nn.Module:
    """max-pool -> sum of the window maxima (a fixed linear read-out)."""

    class Net(nn.Module):
        def forward(self, x):
            return F.max_pool2d(x, kernel, stride).flatten(1).sum(1, keepdim=True)

    return Net().eval()


@pytest.mark.parametrize("rule", ["rescale", "reveal_cancel"])
def test_max_pool_rule_by_hand(rule):
    net = _pool_net(2, 2)
    x = torch.tensor([[1.0, 0.0], [3.0, 0.5]]).view(1, 1, 2, 2)
    # max(x0) = 4 > max(x) = 3: the whole dz = -1 goes to the arg-max of x0 (top right)
    x0 = torch.tensor([[2.0, 4.0], [0.0, 1.0]]).view(1, 1, 2, 2)
    attr, _ = deeplift(net, x, x0, torch.tensor([0]), rule)
    assert attr.flatten().tolist() == pytest.approx([0.0, -1.0, 0.0, 0.0], abs=1e-6)
    # max(x) = 3 >= max(x0) = 2: dz = 1 goes to the arg-max of x (bottom left)
    x0 = torch.tensor([[2.0, 1.0], [0.0, 1.0]]).view(1, 1, 2, 2)
    attr, _ = deeplift(net, x, x0, torch.tensor([0]), rule)
    assert attr.flatten().tolist() == pytest.approx([0.0, 0.0, 1.0, 0.0], abs=1e-6)
    # overlapping windows share their arg-max: both differences (5 + 5) land on it
    net = _pool_net((1, 2), 1)
    x = torch.tensor([0.0, 5.0, 0.0]).view(1, 1, 1, 3)
    attr, meta = deeplift(net, x, torch.zeros_like(x), torch.tensor([0]), rule)
    assert attr.flatten().tolist() == pytest.approx([0.0, 10.0, 0.0], abs=1e-6)
    assert meta[0]["delta"] == pytest.approx(10.0)


SUPPORTED = [
    ("alexnet", 64),
    ("vgg11", 32),
    ("vgg16", 32),
    ("vgg16_bn", 32),
    ("resnet18", 64),
    ("resnet34", 32),
    ("resnet50", 32),
    ("shapes", 64),
]


@pytest.mark.parametrize("arch,size", SUPPORTED, ids=[a for a, _ in SUPPORTED])
def test_summation_to_delta_on_supported_models(arch, size):
    m = model(arch, size)
    n = 1 if arch in ("vgg16", "vgg16_bn", "resnet34", "resnet50") else 2  # CPU time
    x = image_batch(m, n, seed=3)
    t = torch.tensor([1, 7][:n])
    errs = {}
    for rule in ("rescale", "reveal_cancel"):
        a = attribute(m, x, t, "deeplift", {"rule": rule, "baseline": "black"})
        assert torch.isfinite(a.maps).all() and a.maps.abs().max() > 0
        for meta, row in zip(a.meta, a.maps):
            delta = meta["delta"]
            assert abs(delta) > 1e-6  # the check is not vacuous
            assert meta["attribution_sum"] == pytest.approx(float(row.sum()), rel=1e-5, abs=1e-7)
            errs.setdefault(rule, []).append(abs(float(row.sum()) - delta) / abs(delta))
    print(
        f"\n[deeplift] {arch:9s} summation-to-delta relative error: rescale max {max(errs['rescale']):.1e}, "
        f"reveal_cancel max {max(errs['reveal_cancel']):.1e}"
    )
    assert max(errs["rescale"]) <= SUMMATION_TOL
    assert max(errs["reveal_cancel"]) <= SUMMATION_TOL


CAPTUM = [("vgg11", 32), ("vgg16", 32), ("alexnet", 64), ("shapes", 64)]


@pytest.mark.parametrize("arch,size", CAPTUM, ids=[a for a, _ in CAPTUM])
def test_rescale_matches_captum_where_captum_is_right(arch, size):
    """Captum 0.9's DeepLift is a reference only where its own map satisfies Eq. 19: it mishandles
    windows where max(x0) > max(x) and overlapping pooling windows (AlexNet), so the reference is
    the mean image (x0 = 0 after normalisation) on the zero-bias torchvision VGGs."""
    from captum.attr import DeepLift

    m = model(arch, size)
    x = image_batch(m, 1, seed=5)
    x0 = torch.zeros_like(x)
    t = torch.tensor([4])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = DeepLift(m.module).attribute(x.clone().requires_grad_(True), baselines=x0, target=t).detach()
    with torch.no_grad():
        delta = float(m.module(x)[0, 4] - m.module(x0)[0, 4])
    captum_err = abs(float(ref.sum()) - delta) / abs(delta)
    ours, meta = deeplift(m.module, x, x0, t, "rescale")
    d = max_rel_diff(ours, ref)
    print(
        f"\n[captum] {arch:8s} max rel diff {d:.1e}; summation error ours "
        f"{meta[0]['summation_to_delta_relative_error']:.1e}, captum {captum_err:.1e}"
    )
    assert meta[0]["summation_to_delta_relative_error"] <= SUMMATION_TOL
    if captum_err > SUMMATION_TOL:
        pytest.skip(f"Captum's DeepLift breaks summation-to-delta by {captum_err:.1%} on {arch}: not a reference")
    assert d <= 1e-4


class ReusedReLUs(nn.Module):
    """One ReLU module called three times, a functional and an in-place ReLU (as in ResNet / DenseNet)."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1), nn.Conv2d(6, 6, 3)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(6 * 6 * 6, 10)

    def forward(self, x):
        x = self.relu(self.c1(x))
        x = self.relu(self.c2(x) + x)  # reused module after a residual addition
        x = F.avg_pool2d(self.c3(x), 2)
        x = torch.relu_(x)
        return self.fc(F.relu(x.flatten(1)))


class SeparateReLUs(ReusedReLUs):
    def __init__(self):
        super().__init__()
        self.r1, self.r2, self.r3, self.r4 = nn.ReLU(), nn.ReLU(), nn.ReLU(), nn.ReLU()

    def forward(self, x):
        x = self.r1(self.c1(x))
        x = self.r2(self.c2(x) + x)
        x = self.r3(F.avg_pool2d(self.c3(x), 2))
        return self.fc(self.r4(x.flatten(1)))


def test_reused_and_functional_relus():
    torch.manual_seed(0)
    net = ReusedReLUs()
    twin = SeparateReLUs()
    twin.load_state_dict(net.state_dict(), strict=False)
    net.eval().requires_grad_(False)
    twin.eval().requires_grad_(False)
    torch.manual_seed(1)
    x, x0 = torch.randn(2, 3, 14, 14), torch.randn(2, 3, 14, 14)
    t = torch.tensor([2, 5])
    for rule in ("rescale", "reveal_cancel"):
        attr, meta = deeplift(net, x, x0, t, rule)
        assert max(mm["summation_to_delta_relative_error"] for mm in meta) < 1e-5
    from captum.attr import DeepLift  # no max-pooling and one module per call: Captum is right here

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = DeepLift(twin).attribute(x.clone().requires_grad_(True), baselines=x0, target=t).detach()
    ours, _ = deeplift(net, x, x0, t, "rescale")
    assert max_rel_diff(ours, ref) < 1e-5


def test_baselines():
    m = model("resnet18", 64)
    x = image_batch(m, 2)
    mean, std = m.mean_std()
    black = baseline(m, x, "black")
    assert torch.allclose(black, ((0 - mean) / std).expand_as(x))
    white = baseline(m, x, "white")
    assert torch.allclose(white * std + mean, torch.ones_like(x), atol=1e-6)
    u1, u2, u3 = (baseline(m, x, "uniform", seed=s) for s in (3, 3, 4))
    assert torch.equal(u1, u2) and not torch.equal(u1, u3)
    assert torch.equal(u1[0], u1[1])  # one draw for the batch: a sample's map does not depend on its batch
    pix = u1 * std + mean
    assert pix.min() >= -1e-6 and pix.max() <= 1 + 1e-6
    blur = baseline(m, x, "blur", blur_sigma=2.0)
    ref = gaussian_filter(x.numpy().astype(np.float64), sigma=(0, 0, 2.0, 2.0), mode="mirror", truncate=3.0)
    assert np.abs(blur.numpy() - ref).max() < 1e-5
    used = {
        b: attribute(m, x[:1], 3, "deeplift", {"baseline": b, "blur_sigma": 2.0, "seed": 3}).used_params
        for b in ("black", "uniform", "blur")
    }
    assert used["black"] == {"rule": "rescale", "baseline": "black", "precision": "float64"}
    assert used["uniform"]["seed"] == 3 and used["blur"]["blur_sigma"] == 2.0
    assert attribute(m, x[:1], 3, "deeplift", {"baseline": "blur"}).used_params["blur_sigma"] == pytest.approx(6.4)
    a = attribute(m, x, 3, "deeplift", {"baseline": "uniform", "seed": 3})
    b = attribute(m, x[1:], 3, "deeplift", {"baseline": "uniform", "seed": 3})
    assert torch.allclose(a.maps[1:], b.maps, atol=1e-6)
    assert a.used_params == {"rule": "rescale", "baseline": "uniform", "seed": 3, "precision": "float64"}


def test_deeplift_through_attribute_reports_meta():
    m = wrap(
        nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 3 * 3, 10)),
        "tiny",
        size=8,
        norm={"mean": [0.5], "std": [0.5]},
    )
    x = image_batch(m, 1)
    a = attribute(m, x, 2, "deeplift", {"rule": "reveal_cancel", "baseline": "white"})
    assert a.maps.shape == (1, 1, 8, 8)
    keys = {
        "score",
        "reference_score",
        "delta",
        "attribution_sum",
        "summation_to_delta_error",
        "summation_to_delta_relative_error",
    }
    assert keys <= set(a.meta[0])
    assert abs(a.meta[0]["summation_to_delta_error"]) < 1e-5


def test_float32_precision_is_close_to_float64():
    m = model("resnet18", 64)
    x = image_batch(m, 1, seed=8)
    a64 = attribute(m, x, 2, "deeplift", {"rule": "reveal_cancel"})
    a32 = attribute(m, x, 2, "deeplift", {"rule": "reveal_cancel", "precision": "float32"})
    assert a32.used_params["precision"] == "float32"
    assert max_rel_diff(a32.maps, a64.maps) < 1e-4
    assert a64.meta[0]["summation_to_delta_relative_error"] < 1e-9
