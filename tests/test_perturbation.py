"""The perturbation family (§6 adversarial, §2.1 black box) against independent references:
Captum's Occlusion, Lime, FGSM and PGD (test-only references), hand-built models whose
relevant region is known, and the cancellation/progress contract."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from pydantic import ValidationError
from scipy import ndimage

from schemas.methods import CATALOG, parse_params
from schemas.registry import ModelEntry
from workers.errors import Cancelled
from workers.explain import IMPLEMENTATIONS, applicability, attribute
from workers.explain.base import Progress
from workers.explain.baselines import baseline, gaussian_blur
from workers.models.loading import load_model
from workers.models.shapes_cnn import ShapesCNN
from workers.training.shapes import generate, to_tensor

torch.set_num_threads(1)

NAMES = ["adversarial", "adversarial_generators", "occlusion", "lime", "meaningful_perturbation"]


def entry(name="s", size=64, classes=10):
    return ModelEntry(
        name=name,
        architecture="whitebox.shapes_cnn",
        num_classes=classes,
        input={"size": [size, size], "mean": [0.5] * 3, "std": [0.25] * 3},
    )


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

    m, x, t = seeded
    a = attribute(m, x, t, "occlusion", {"window": window, "stride": stride, "fill": fill}).maps
    base = baseline(m, x, fill, blur_sigma=window / 2)
    ref = Occlusion(m.module).attribute(
        x,
        sliding_window_shapes=(3, window, window),
        strides=(3, stride, stride),
        baselines=base,
        target=t,
        perturbations_per_eval=64,
    )
    for c in range(3):  # Captum repeats the value over the channels the window covers
        err = (a[:, 0] - ref[:, c]).abs().max() / (ref.max() - ref.min())
        assert err <= 1e-5, err


def test_the_one_blur_matches_scipy():
    """The blur of every baseline and fill: scipy's Gaussian filter with mirror borders (torch's
    reflect) and a kernel cut at 3 sigma; a constant image stays constant, also when the kernel is
    longer than the image."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 20, 17, generator=g, dtype=torch.float64)
    for sigma in (1.0, 2.0, 3.0):
        want = ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, sigma, sigma), mode="mirror", truncate=3.0)
        np.testing.assert_allclose(gaussian_blur(x, sigma).numpy(), want, atol=1e-12)
    c = torch.full((1, 1, 5, 4), 0.7, dtype=torch.float64)
    torch.testing.assert_close(gaussian_blur(c, 10.0), c)
    assert gaussian_blur(x, 0.0) is x


def test_occlusion_hand_computed():
    """A linear 'model' S_0 = sum of channel 0 over a square: the drop for a window is the sum of
    x over the window's intersection with the square (gray fill = 0 in this normalisation)."""

    class Lin(nn.Module):
        def forward(self, x):
            s = x[:, 0, 8:24, 8:24].sum((1, 2))
            return torch.stack([s, -s], 1)

    m = load_model(
        ModelEntry(
            name="lin",
            architecture="x:y",
            num_classes=2,
            input={"size": [32, 32], "mean": [0.5] * 3, "std": [0.25] * 3},
        ),
        module=Lin(),
    )
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    a = attribute(m, x, 0, "occlusion", {"window": 8, "stride": 8}).maps[0, 0]
    for r in range(0, 32, 8):
        for c in range(0, 32, 8):
            inside = 8 <= r < 24 and 8 <= c < 24
            expect = float(x[0, 0, r : r + 8, c : c + 8].sum()) if inside else 0.0
            assert abs(float(a[r, c]) - expect) < 1e-4, (r, c, float(a[r, c]), expect)


# ---- lime vs Captum ---------------------------------------------------------------------------------
def _ref_log_odds(out):
    """log(p / (1 - p)) of every class in float64 (the seeded model is far from saturation)."""
    p = torch.softmax(out.double(), 1)
    return torch.log(p) - torch.log1p(-p)


LIME_FORWARD = {"log_odds": _ref_log_odds, "logit": lambda out: out, "probability": lambda out: torch.softmax(out, 1)}


@pytest.mark.parametrize("score", ["log_odds", "logit", "probability"])
def test_lime_matches_captum_ranking(seeded, score):
    from captum._utils.models.linear_model import SkLearnRidge
    from captum.attr import Lime

    from workers.explain import lime as L

    m, x, t = seeded
    body = {"samples": 200, "segments": 30, "seed": 5}
    if score != "log_odds":
        body["score"] = score  # log_odds is the default
    params = parse_params("lime", body)
    att = attribute(m, x[:1], t[:1], "lime", params)
    assert att.used_params["score"] == score
    a = att.maps[0, 0]
    seg = torch.from_numpy(L.segment(m, x[0], "slic", 30))
    k = int(seg.max()) + 1
    z = L.draws(200, k, 5)  # the draws lime uses for sample 0 with seed 5
    fill = L.superpixel_fill(x[0], seg, k)
    it = iter(z)

    def replay(original_inp, **kw):
        return next(it).view(1, -1)

    fwd = LIME_FORWARD[score]
    ref = Lime(lambda inp: fwd(m.module(inp)), interpretable_model=SkLearnRidge(alpha=1.0), perturb_func=replay)
    coef = ref.attribute(
        x[:1],
        target=int(t[0]),
        feature_mask=seg.view(1, 1, 64, 64).expand(1, 3, 64, 64),
        baselines=fill[None],
        n_samples=200,
        perturbations_per_eval=50,
        return_input_shape=False,
    )[0]
    ours = torch.stack([a[seg == j][0] for j in range(k)])
    top = 5
    assert ours.argsort(descending=True)[:top].tolist() == coef.argsort(descending=True)[:top].tolist()
    assert torch.allclose(ours.double(), coef.double(), atol=1e-4 * float(coef.abs().max()) + 1e-7)
    if score == "log_odds":
        # the seed decides the draws: another seed gives another map
        other = attribute(m, x[:1], t[:1], "lime", {"samples": 200, "segments": 30, "seed": 6}).maps[0, 0]
        assert not torch.equal(other, a)


# ---- FGSM / PGD vs captum.robust -------------------------------------------------------------------
def _others(out, t):
    return out.masked_fill(nn.functional.one_hot(t, out.shape[1]).bool(), float("-inf"))


# the losses handed to Captum, written from their definitions (per sample; Captum sums them)
CAPTUM_LOSS = {
    "log_odds": lambda out, t: torch.logsumexp(_others(out, t), 1) - out.gather(1, t[:, None])[:, 0],
    "margin": lambda out, t: _others(out, t).max(1).values - out.gather(1, t[:, None])[:, 0],
    "cross_entropy": nn.CrossEntropyLoss(reduction="none"),
}


@pytest.mark.parametrize("loss", ["log_odds", "margin", "cross_entropy"])
def test_fgsm_matches_captum(seeded, loss):
    from captum.robust import FGSM

    m, x, t = seeded
    eps = 4 / 255
    body = {"attack": "fgsm", "epsilon": eps}
    if loss != "log_odds":
        body["loss"] = loss  # log_odds is the default
    att = attribute(m, x, t, "adversarial", body)
    assert att.used_params["loss"] == loss
    a = att.maps
    adv = FGSM(m.module, loss_func=CAPTUM_LOSS[loss], lower_bound=-2.0, upper_bound=2.0).perturb(
        x, epsilon=eps / 0.25, target=t
    )
    assert torch.equal(a, adv - x)
    assert (a.abs().amax() - eps / 0.25).abs() < 1e-6


@pytest.mark.parametrize(
    "steps,step,loss",
    [(10, None, "log_odds"), (5, 1 / 255, "log_odds"), (10, None, "margin"), (5, 1 / 255, "cross_entropy")],
)
def test_pgd_matches_captum(seeded, steps, step, loss):
    from captum.robust import PGD

    m, x, t = seeded
    eps = 8 / 255
    params = {"attack": "pgd", "epsilon": eps, "steps": steps, "loss": loss}
    if step:
        params["step_size"] = step
    att = attribute(m, x, t, "adversarial", params)
    ss = att.used_params["step_size"]
    adv = PGD(m.module, loss_func=CAPTUM_LOSS[loss], lower_bound=-2.0, upper_bound=2.0).perturb(
        x, radius=eps / 0.25, step_size=ss / 0.25, step_num=steps, target=t
    )
    assert torch.allclose(att.maps, adv - x, rtol=0, atol=1e-6)
    assert att.meta[0]["linf"] <= eps + 1e-6


def test_log_odds_attack_keeps_the_cross_entropy_direction(seeded):
    """CE = softplus(-log_odds): where the CE gradient is not negligible both FGSM steps are equal."""
    m, x, t = seeded
    ce = attribute(m, x, t, "adversarial", {"attack": "fgsm", "loss": "cross_entropy"}).maps
    lo = attribute(m, x, t, "adversarial", {"attack": "fgsm"}).maps
    moved = ce != 0
    assert moved.float().mean() > 0.5
    assert torch.equal(lo[moved], ce[moved])
    assert int((lo != 0).sum()) >= int(moved.sum())


def test_log_odds_and_margin_helpers():
    from workers.explain.perturb_utils import log_odds, logit_margin, softmax_saturated

    z = torch.tensor([[2.0, 0.5, -1.0], [60.0, 0.0, -10.0], [0.0, 300.0, 1.0]])
    t = torch.tensor([0, 0, 0])
    p = torch.softmax(z.double(), 1)[:, 0]
    # by hand: z_t - log(sum_{j != t} e^z_j)
    assert abs(float(log_odds(z, t)[0]) - float(torch.log(p[0] / (1 - p[0])))) < 1e-5
    assert abs(float(log_odds(z, t)[1]) - (60.0 - math.log(1 + math.exp(-10.0)))) < 1e-4
    assert abs(float(log_odds(z, t)[2]) - (0.0 - (300.0 + math.log1p(math.exp(-299.0))))) < 1e-3
    assert logit_margin(z, t).tolist() == [1.5, 60.0, -300.0]
    assert softmax_saturated(z, t).tolist() == [False, True, True]  # p_0 = 1.0 and 0.0 in float32


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
        e = self.lap(x).abs()[:, 0, self.r0 : self.r1, self.r0 : self.r1].mean((1, 2))
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
    m = load_model(
        ModelEntry(
            name="tex",
            architecture="x:y",
            num_classes=2,
            input={"size": [64, 64], "mean": [0.5] * 3, "std": [0.25] * 3},
        ),
        module=Texture(),
    )
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


# ---- saturated predictions on the trained demo model ---------------------------------------------
# About half of the generated images get a softmax probability of exactly 1.0 in float32 from the
# demo model; objectives through the softmax (CE gradient, probability) are then constant and the
# maps were all zero. Forced saturation: the same net with its logits multiplied by 100.
class Scaled(nn.Module):
    def __init__(self, net, k=100.0):
        super().__init__()
        self.net, self.k = net, k

    def forward(self, x):
        return self.k * self.net(x)


@pytest.fixture(scope="module")
def saturated():
    """(model, x, targets, object masks) of 6 correctly classified images with p = 1.0 in float32,
    and the same for the logits x 100 model on 4 images that are not saturated without the factor."""
    from schemas.registry import load_registry

    reg = load_registry()
    e = reg.get("shapes-cnn")
    if not reg.resolve(e.weights).exists():
        pytest.skip("workers/models/weights/shapes-cnn.safetensors is absent (demo model not trained yet)")
    m = load_model(e, reg)
    imgs, labels, masks = generate(30, 99)
    x = to_tensor(imgs)
    with torch.no_grad():
        logits = m.module(x)
    p = torch.softmax(logits, 1).amax(1)
    ok = logits.argmax(1) == torch.from_numpy(labels)
    sat = ((p == 1.0) & ok).nonzero().flatten()[:6]
    uns = ((p < 1.0) & ok).nonzero().flatten()[:4]
    assert len(sat) == 6 and len(uns) == 4
    m100 = load_model(e, module=Scaled(m.module))
    with torch.no_grad():
        assert bool((torch.softmax(m100.module(x[uns]), 1).amax(1) == 1.0).all())
    return {
        "demo": (m, x[sat], logits[sat].argmax(1), masks[sat.numpy()]),
        "x100": (m100, x[uns], logits[uns].argmax(1), masks[uns.numpy()]),
    }


def inside_fraction(maps, masks, dilate=3):
    """Share of the positive relevance (summed over channels) within the object mask dilated by
    `dilate` pixels, and the dilated mask's area share (what a map without localisation gets)."""
    from scipy.ndimage import binary_dilation

    dil = np.stack([binary_dilation(mk, iterations=dilate) for mk in masks])
    r = maps.sum(1).clamp_min(0).numpy()
    return (r * dil).sum((1, 2)) / r.sum((1, 2)), dil.mean((1, 2))


@pytest.mark.parametrize("which", ["demo", "x100"])
@pytest.mark.parametrize("attack", ["fgsm", "pgd", "deepfool"])
def test_attacks_on_saturated_predictions(saturated, which, attack):
    m, x, t, _ = saturated[which]
    att = attribute(m, x, t, "adversarial", {"attack": attack})
    for i, meta in enumerate(att.meta):
        assert meta["target_probability"] == 1.0
        assert bool((att.maps[i] != 0).any()) and "warning" not in meta, meta
        # the attack moved the target's score down (log-odds keeps its resolution where p stays 1.0)
        assert meta["adversarial_target_log_odds"] < meta["target_log_odds"] - 1.0, meta
    flips = sum(mt["flipped"] for mt in att.meta)
    if attack != "fgsm":
        assert flips == len(att.meta), [mt["flipped"] for mt in att.meta]
    if attack != "deepfool":
        assert (att.maps.abs().amax() - 8 / 255 / 0.25).abs() < 1e-6
        # the classical cross-entropy loss: a zero map, reported
        ce = attribute(m, x, t, "adversarial", {"attack": attack, "loss": "cross_entropy"})
        assert not bool(ce.maps.any())
        assert all("saturated" in mt["warning"] for mt in ce.meta)


def test_lime_on_saturated_predictions(saturated):
    m, x, t, masks = saturated["demo"]
    att = attribute(m, x, t, "lime", {})
    assert all(bool((att.maps[i] > 0).any()) and "warning" not in mt for i, mt in enumerate(att.meta))
    frac, area = inside_fraction(att.maps, masks)
    # measured: 0.74 0.51 0.52 0.37 0.77 0.75 (mean 0.61) against areas 0.36 0.34 0.41 0.29 0.53 0.32;
    # LIME is a sampled surrogate (and which images saturate depends on float rounding, i.e. on the
    # thread count), so one image may fall to its area: the mean is what is asserted
    assert frac.mean() > 0.5 and frac.mean() > 1.3 * area.mean(), (frac, area)
    m100, x100, t100, masks100 = saturated["x100"]
    a100 = attribute(m100, x100, t100, "lime", {"samples": 300})
    assert all(bool((a100.maps[i] > 0).any()) for i in range(len(t100)))
    frac, area = inside_fraction(a100.maps, masks100)
    assert frac.mean() > 0.5 and frac.mean() > 1.3 * area.mean(), (frac, area)
    # the probability score is constant on the saturated images: zero map or a warning, never silent
    pr = attribute(m100, x100[:2], t100[:2], "lime", {"samples": 100, "score": "probability"})
    assert all("saturated" in mt["warning"] for mt in pr.meta)


def test_meaningful_perturbation_on_saturated_predictions(saturated):
    m, x, t, masks = saturated["demo"]
    att = attribute(m, x, t, "meaningful_perturbation", {"mask_scale": 4})
    for i, mt in enumerate(att.meta):
        assert mt["target_probability"] == 1.0 and "warning" not in mt
        assert bool((att.maps[i] > 0).any())
        assert mt["perturbed_target_probability"] < 0.2, mt  # the deletion drops the score (drop_to 0.05)
        assert mt["kept_fraction"] > 0.5, mt  # ... with a mask much smaller than the image
    frac, area = inside_fraction(att.maps, masks)
    # measured: 0.69 0.60 0.72 0.62 0.72 0.60 (mean 0.66) against areas 0.36 0.34 0.41 0.29 0.53 0.32
    assert frac.mean() > 0.55 and bool((frac > area).all()), (frac, area)
    # default grid (mask_scale 8) and the x 100 model: non-zero too
    m100, x100, t100, _ = saturated["x100"]
    for mm, xx, tt in ((m, x[:2], t[:2]), (m100, x100, t100)):
        a = attribute(mm, xx, tt, "meaningful_perturbation", {"iterations": 100})
        assert all(bool((a.maps[i] > 0).any()) and "warning" not in mt for i, mt in enumerate(a.meta))
    # the 2017 paper's probability objective: its gradient is 0 up to the jitter's rare non-saturated
    # draws (which Adam's normalisation still turns into small steps): a near-zero map, reported
    pr = attribute(m, x[:2], t[:2], "meaningful_perturbation", {"score": "probability", "iterations": 5})
    assert float(pr.maps.amax()) < 0.1 and all("saturated" in mt["warning"] for mt in pr.meta)


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
    m = load_model(
        ModelEntry(
            name="tiny",
            architecture="x:y",
            num_classes=3,
            input={"size": [224, 224], "mean": [0.5] * 3, "std": [0.25] * 3},
        ),
        module=Tiny(),
    )
    x = torch.randn(1, 3, 224, 224)
    seen: list[float] = []
    prog = Progress(report=seen.append, cancelled=lambda: len(seen) >= 4)
    with pytest.raises(Cancelled):
        attribute(m, x, 0, "occlusion", {"window": 16, "stride": 1}, progress=prog)
    assert len(seen) == 4  # stopped at the first progress call after the cancel: within one batch
    assert seen == sorted(seen) and seen[-1] > seen[0] and seen[-1] < 0.01  # 209*209 windows: far from done
