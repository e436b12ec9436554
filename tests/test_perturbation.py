"""The perturbation family (§6 adversarial, §2.1 black box) against independent references:
Captum's Occlusion, Lime, FGSM and PGD (test-only references), hand-built models whose
relevant region is known, and the cancellation/progress contract."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from pydantic import ValidationError

from schemas.methods import CATALOG, parse_params
from schemas.registry import ModelEntry
from workers.data.shapes import generate, to_tensor
from workers.errors import Cancelled
from workers.explain import IMPLEMENTATIONS, applicability, attribute
from workers.explain.base import Progress
from workers.loading import load_model
from workers.models.shapes_cnn import ShapesCNN

torch.set_num_threads(1)

NAMES = ["adversarial", "adversarial_generators", "occlusion", "lime", "meaningful_perturbation"]


def entry(name="s", size=64, classes=10):
    return ModelEntry(name=name, architecture="whitebox.shapes_cnn", num_classes=classes,
                      input={"size": [size, size], "mean": [0.5] * 3, "std": [0.25] * 3})


@pytest.fixture(scope="module")
def seeded():
    torch.manual_seed(0)
    net = ShapesCNN(10)
    m = load_model(entry(), module=net)
    x = to_tensor(generate(2, 11)[0])
    with torch.no_grad():
        t = net(x).argmax(1)
    return m, x, t


def test_catalog_and_implementations():
    for n in NAMES:
        assert n in CATALOG and n in IMPLEMENTATIONS
    assert CATALOG["adversarial"].family == "adversarial" and CATALOG["occlusion"].family == "black_box"
    with pytest.raises(ValidationError):
        parse_params("occlusion", {"window": 8, "stride": 9})
    with pytest.raises(ValidationError):
        parse_params("adversarial", {"attack": "cw"})
    with pytest.raises(ValidationError):
        parse_params("lime", {"samples": 3})


def test_generators_not_applicable_without_weights(seeded):
    m, _, _ = seeded
    reason = applicability(m)["adversarial_generators"]
    assert reason and "binary" in reason


# ---- occlusion vs Captum ------------------------------------------------------------------------
@pytest.mark.parametrize("window,stride,fill", [(16, 8, "gray"), (16, 12, "black"), (11, 5, "blur"), (8, 8, "mean")])
def test_occlusion_matches_captum(seeded, window, stride, fill):
    from captum.attr import Occlusion

    from workers.explain.perturb_utils import fill_image

    m, x, t = seeded
    a = attribute(m, x, t, "occlusion", {"window": window, "stride": stride, "fill": fill}).maps
    base = fill_image(m, x, fill, window / 2)
    ref = Occlusion(m.module).attribute(x, sliding_window_shapes=(3, window, window), strides=(3, stride, stride),
                                        baselines=base, target=t, perturbations_per_eval=64)
    for c in range(3):  # Captum repeats the value over the channels the window covers
        err = (a[:, 0] - ref[:, c]).abs().max() / (ref.max() - ref.min())
        assert err <= 1e-5, err


def test_occlusion_hand_computed():
    """A linear 'model' S_0 = sum of channel 0 over a square: the drop for a window is the sum of
    x over the window's intersection with the square (gray fill = 0 in this normalisation)."""

    class Lin(nn.Module):
        def forward(self, x):
            s = x[:, 0, 8:24, 8:24].sum((1, 2))
            return torch.stack([s, -s], 1)

    m = load_model(ModelEntry(name="lin", architecture="x:y", num_classes=2,
                              input={"size": [32, 32], "mean": [0.5] * 3, "std": [0.25] * 3}), module=Lin())
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    a = attribute(m, x, 0, "occlusion", {"window": 8, "stride": 8}).maps[0, 0]
    for r in range(0, 32, 8):
        for c in range(0, 32, 8):
            inside = 8 <= r < 24 and 8 <= c < 24
            expect = float(x[0, 0, r:r + 8, c:c + 8].sum()) if inside else 0.0
            assert abs(float(a[r, c]) - expect) < 1e-4, (r, c, float(a[r, c]), expect)


# ---- lime vs Captum ---------------------------------------------------------------------------------
def test_lime_matches_captum_ranking(seeded):
    from captum._utils.models.linear_model import SkLearnRidge
    from captum.attr import Lime

    from workers.explain import lime as L

    m, x, t = seeded
    params = parse_params("lime", {"samples": 200, "segments": 30, "seed": 5})
    a = attribute(m, x[:1], t[:1], "lime", params).maps[0, 0]
    seg = torch.from_numpy(L.segment(m, x[0], "slic", 30))
    k = int(seg.max()) + 1
    z = L.draws(200, k, 5)  # the draws lime uses for sample 0 with seed 5
    fill = L.superpixel_fill(x[0], seg, k)
    it = iter(z)

    def replay(original_inp, **kw):
        return next(it).view(1, -1)

    ref = Lime(lambda inp: torch.softmax(m.module(inp), 1), interpretable_model=SkLearnRidge(alpha=1.0),
               perturb_func=replay)
    coef = ref.attribute(x[:1], target=int(t[0]), feature_mask=seg.view(1, 1, 64, 64).expand(1, 3, 64, 64),
                         baselines=fill[None], n_samples=200, perturbations_per_eval=50,
                         return_input_shape=False)[0]
    ours = torch.stack([a[seg == j][0] for j in range(k)])
    top = 5
    assert ours.argsort(descending=True)[:top].tolist() == coef.argsort(descending=True)[:top].tolist()
    assert torch.allclose(ours.double(), coef.double(), atol=1e-4 * float(coef.abs().max()) + 1e-7)
    # the seed decides the draws: another seed gives another map
    other = attribute(m, x[:1], t[:1], "lime", {"samples": 200, "segments": 30, "seed": 6}).maps[0, 0]
    assert not torch.equal(other, a)


# ---- FGSM / PGD vs captum.robust -------------------------------------------------------------------
def test_fgsm_matches_captum(seeded):
    from captum.robust import FGSM

    m, x, t = seeded
    eps = 4 / 255
    a = attribute(m, x, t, "adversarial", {"attack": "fgsm", "epsilon": eps}).maps
    adv = FGSM(m.module, loss_func=nn.CrossEntropyLoss(reduction="none"), lower_bound=-2.0, upper_bound=2.0).perturb(
        x, epsilon=eps / 0.25, target=t)
    assert torch.equal(a, adv - x)
    assert (a.abs().amax() - eps / 0.25).abs() < 1e-6


@pytest.mark.parametrize("steps,step", [(10, None), (5, 1 / 255)])
def test_pgd_matches_captum(seeded, steps, step):
    from captum.robust import PGD

    m, x, t = seeded
    eps = 8 / 255
    params = {"attack": "pgd", "epsilon": eps, "steps": steps}
    if step:
        params["step_size"] = step
    att = attribute(m, x, t, "adversarial", params)
    ss = att.used_params["step_size"]
    adv = PGD(m.module, loss_func=nn.CrossEntropyLoss(reduction="none"), lower_bound=-2.0, upper_bound=2.0).perturb(
        x, radius=eps / 0.25, step_size=ss / 0.25, step_num=steps, target=t)
    assert torch.allclose(att.maps, adv - x, rtol=0, atol=1e-6)
    assert att.meta[0]["linf"] <= eps + 1e-6


def test_adversarial_meta_and_box(seeded):
    m, x, t = seeded
    att = attribute(m, x, t, "adversarial", {"attack": "deepfool"})
    lo, hi = m.input_bounds()
    xa = x + att.maps
    assert bool((xa >= lo - 1e-6).all() and (xa <= hi + 1e-6).all())
    with torch.no_grad():
        pred = m.module(xa).argmax(1)
    for i, meta in enumerate(att.meta):
        assert meta["flipped"] == bool(pred[i] != t[i])
        d = (att.maps[i] * 0.25).flatten()
        assert abs(meta["l2"] - float(d.norm())) < 1e-4 and abs(meta["linf"] - float(d.abs().max())) < 1e-5


def test_one_pixel_marks_changed_pixels(seeded):
    m, x, t = seeded
    p = {"attack": "one_pixel", "pixels": 2, "population": 20, "iterations": 3, "seed": 3}
    a1 = attribute(m, x[:1], t[:1], "adversarial", p)
    a2 = attribute(m, x[:1], t[:1], "adversarial", p)
    assert torch.equal(a1.maps, a2.maps)
    changed = a1.maps[0].sum(0) > 0
    assert 1 <= int(changed.sum()) <= 2
    for px in a1.meta[0]["pixels"]:
        assert changed[px["row"], px["col"]]


# ---- meaningful perturbation on a model whose evidence is known ----------------------------------
class Texture(nn.Module):
    """Class 0's score = high-frequency energy inside a square (blurring it deletes the evidence)."""

    def __init__(self, r0=16, r1=32):
        super().__init__()
        self.r0, self.r1 = r0, r1
        k = torch.tensor([[0.0, -1, 0], [-1, 4, -1], [0, -1, 0]])
        self.lap = nn.Conv2d(3, 1, 3, padding=1, bias=False)
        self.lap.weight.data = k.expand(1, 3, 3, 3).clone() / 3

    def forward(self, x):
        e = self.lap(x).abs()[:, 0, self.r0:self.r1, self.r0:self.r1].mean((1, 2))
        return torch.stack([0.3 * (e - 2.0), torch.zeros_like(e)], 1)  # p_0 about 0.95: not saturated


def texture_image():
    g = torch.Generator().manual_seed(0)
    x = 0.1 * torch.randn(1, 3, 64, 64, generator=g)
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    checker = ((yy + xx) % 2).float() * 2 - 1
    x[:, :, 16:32, 16:32] += 1.5 * checker[16:32, 16:32]
    return x


@pytest.mark.parametrize("variant", ["deletion", "extremal"])
def test_meaningful_perturbation_finds_the_evidence(variant):
    m = load_model(ModelEntry(name="tex", architecture="x:y", num_classes=2,
                              input={"size": [64, 64], "mean": [0.5] * 3, "std": [0.25] * 3}), module=Texture())
    x = texture_image()
    params = {"variant": variant, "iterations": 100, "seed": 1, "area": 0.0625, "mask_scale": 4}
    att = attribute(m, x, 0, "meaningful_perturbation", params)
    r = att.maps[0, 0].clamp_min(0)
    assert float(r.sum()) > 0
    # the square is 6 % of the image; with the blur's reach (4 px) 14 %
    near = float(r[12:36, 12:36].sum() / r.sum())
    assert near > 0.6, near
    row, col = divmod(int(r.argmax()), 64)
    assert 12 <= row < 36 and 12 <= col < 36
    if variant == "extremal":
        assert float(r[16:32, 16:32].sum() / r.sum()) > 0.5
        assert att.meta[0]["perturbed_target_probability"] > 0.8 * att.meta[0]["target_probability"]
    else:
        assert att.meta[0]["perturbed_target_probability"] < 0.5 * att.meta[0]["target_probability"]
    again = attribute(m, x, 0, "meaningful_perturbation", params).maps
    assert torch.equal(again, att.maps)


# ---- progress and cancellation ----------------------------------------------------------------------
class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 5, stride=4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def test_long_occlusion_is_cancelled_promptly():
    torch.manual_seed(0)
    m = load_model(ModelEntry(name="tiny", architecture="x:y", num_classes=3,
                              input={"size": [224, 224], "mean": [0.5] * 3, "std": [0.25] * 3}), module=Tiny())
    x = torch.randn(1, 3, 224, 224)
    seen: list[float] = []
    prog = Progress(report=seen.append, cancelled=lambda: len(seen) >= 4)
    with pytest.raises(Cancelled):
        attribute(m, x, 0, "occlusion", {"window": 16, "stride": 1}, progress=prog)
    assert len(seen) == 4  # stopped at the first progress call after the cancel: within one batch
    assert seen == sorted(seen) and seen[-1] > seen[0] and seen[-1] < 0.01  # 209*209 windows: far from done
