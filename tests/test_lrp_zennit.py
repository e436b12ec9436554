"""LRP and deep Taylor decomposition against Zennit 1.0 (an independent implementation
with module hooks), on seeded vgg16, vgg16_bn, resnet18 and resnet50 with Zennit's own
canonizers (BatchNorm merging, ResNet's residual Sum). Agreement: max |ours - zennit|
<= 1e-4 of the range of Zennit's map, in float32.

Measure: ``pytest tests/test_lrp_zennit.py -s`` prints one line per case."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.structure_support import image_batch, max_rel_diff, model
from workers.explain import attribute
from workers.explain.canonize import model_analysis

zennit = pytest.importorskip("zennit")
from zennit.attribution import Gradient  # noqa: E402
from zennit.composites import (
    EpsilonAlpha2Beta1,
    EpsilonGammaBox,
    EpsilonPlusFlat,
    LayerMapComposite,  # noqa: E402
    SpecialFirstLayerMapComposite,
    layer_map_base,
)
from zennit.rules import AlphaBeta, Epsilon, Gamma, WSquare, ZBox, ZPlus  # noqa: E402
from zennit.torchvision import ResNetCanonizer, VGGCanonizer  # noqa: E402
from zennit.types import Convolution, Linear  # noqa: E402

TOL = 1e-4
TARGET = 3


def single(rule, canon, norm_stabilizer=1e-6):
    return LayerMapComposite(
        layer_map=layer_map_base(norm_stabilizer) + [(Convolution, rule), (torch.nn.Linear, rule)], canonizers=canon
    )


def deep_taylor_ref(first, canon):
    return SpecialFirstLayerMapComposite(
        layer_map=layer_map_base() + [(Linear, ZPlus(zero_params="bias"))],
        first_map=[(Linear, first)],
        canonizers=canon,
    )


# (id, method, params, zennit composite factory (low, high, canonizers) -> composite)
CASES = {
    "epsilon": ("lrp", {"rule": "epsilon"}, lambda lo, hi, c: single(Epsilon(0.25), c)),
    "epsilon_nobias": (
        "lrp",
        {"rule": "epsilon", "bias": False},
        lambda lo, hi, c: single(Epsilon(0.25, zero_params="bias"), c),
    ),
    # LRP-0 is unstabilised at additions and average pools too (Zennit: a negligible 1e-30)
    "zero": ("lrp", {"rule": "zero"}, lambda lo, hi, c: single(Epsilon(0.0), c, norm_stabilizer=1e-30)),
    "gamma": ("lrp", {"rule": "gamma", "gamma": 0.25}, lambda lo, hi, c: single(Gamma(0.25), c)),
    "alpha2beta1": ("lrp", {"rule": "alpha_beta", "alpha": 2, "beta": 1}, lambda lo, hi, c: single(AlphaBeta(2, 1), c)),
    "epsilon_plus_flat": (
        "lrp",
        {"composite": "epsilon_plus_flat"},
        lambda lo, hi, c: EpsilonPlusFlat(epsilon=0.25, canonizers=c),
    ),
    "epsilon_gamma_box": (
        "lrp",
        {"composite": "epsilon_gamma_box"},
        lambda lo, hi, c: EpsilonGammaBox(low=lo, high=hi, epsilon=0.25, gamma=0.25, canonizers=c),
    ),
    "epsilon_alpha2_beta1": (
        "lrp",
        {"composite": "epsilon_alpha2_beta1"},
        lambda lo, hi, c: EpsilonAlpha2Beta1(epsilon=0.25, canonizers=c),
    ),
    "dtd_zbox": (
        "deep_taylor",
        {"input_rule": "zbox"},
        lambda lo, hi, c: deep_taylor_ref(ZBox(lo, hi, zero_params="bias"), c),
    ),
    "dtd_wsquare": (
        "deep_taylor",
        {"input_rule": "wsquare"},
        lambda lo, hi, c: deep_taylor_ref(WSquare(zero_params="bias"), c),
    ),
}
# dense-layer-heavy rules (gamma / alpha-beta on VGG's 25088x4096 layer) are checked on the ResNets only
MATRIX = (
    [("resnet18", c) for c in CASES]
    + [("resnet50", c) for c in ("epsilon_gamma_box",)]
    + [("vgg16", c) for c in ("zero", "epsilon_plus_flat")]
    + [("vgg16_bn", c) for c in ("epsilon_gamma_box", "dtd_zbox")]
)
SIZE = {"resnet18": 64, "resnet50": 32, "vgg16": 32, "vgg16_bn": 32}  # inputs kept small for CPU test time


def zennit_map(m, x, target, composite):
    with Gradient(m.module, composite) as attributor:
        _, rel = attributor(
            x.clone().requires_grad_(True),
            lambda out: F.one_hot(torch.full((x.shape[0],), target), out.shape[1]).to(out) * out,
        )
    return rel.detach()


@pytest.mark.parametrize("arch,case", MATRIX, ids=[f"{a}-{c}" for a, c in MATRIX])
def test_matches_zennit(arch, case):
    m = model(arch, SIZE[arch])
    x = image_batch(m, 1)
    method, params, factory = CASES[case]
    ours = attribute(m, x, TARGET, method, params)
    lo, hi = m.input_bounds()
    canon = [ResNetCanonizer()] if arch.startswith("resnet") else [VGGCanonizer()]
    ref = zennit_map(m, x, TARGET, factory(lo, hi, canon))
    d = max_rel_diff(ours.maps, ref)
    print(
        f"\n[zennit] {arch:9s} {method}:{case:22s} max rel diff {d:.2e}  sum ours {float(ours.maps.sum()):+.5g} "
        f"zennit {float(ref.sum()):+.5g}  logit {ours.meta[0]['logit']:+.4g}"
    )
    assert torch.isfinite(ours.maps).all()
    assert float(ref.max() - ref.min()) > 0
    assert d <= TOL


def test_batchnorm_is_folded_once_per_model():
    """Canonization is computed once per model and folds every conv-BN pair."""
    m = model("vgg16_bn", SIZE["vgg16_bn"])
    a = model_analysis(m)
    assert model_analysis(m) is a
    assert len(a.fold_names) == 13 and a.fold_names[0] == ("features.0", "features.1")
    r = model("resnet18", SIZE["resnet18"])
    names = dict(model_analysis(r).fold_names)
    assert len(names) == 20 and names["layer2.0.downsample.0"] == "layer2.0.downsample.1"
