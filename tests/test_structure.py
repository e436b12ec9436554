"""Structure family (§5) at library level: the LRP conservation axiom (Eq. 11) layer by layer,
the bias share, residual splitting, deep Taylor's positivity and conservation, parameter
validation, and the refusal of models with layers no rule covers."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import ValidationError

from schemas.methods import CATALOG
from schemas.methods.structure import COMPOSITES, LRP_RULES, DeepLiftParams, DeepTaylorParams, LrpParams
from tests.structure_support import image_batch, model, wrap
from workers.errors import MethodError
from workers.explain import IMPLEMENTATIONS, applicability, attribute
from workers.explain.rules.lrp import RULES, LinearRule, RuleArgs
from workers.explain.structure import lrp_chooser, relevance_pass

STRUCTURE = ("lrp", "deep_taylor", "deeplift", "fem")


def test_catalog_and_implementations():
    for name in STRUCTURE:
        assert CATALOG[name].family == "structure"
        assert name in IMPLEMENTATIONS
    assert CATALOG["lrp"].default_reduce == CATALOG["deeplift"].default_reduce == "sum"


def test_rule_and_composite_registries_agree():
    """The torch-free declarations (names, descriptions, composites' layer maps) and the torch rule
    builders name the same rules; the request's choices and docs are built from the declarations."""
    assert set(RULES) == set(LRP_RULES)
    lo, hi = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)
    for name, build in RULES.items():
        assert isinstance(build(RuleArgs(low=lo, high=hi)), LinearRule), name
    for spec in COMPOSITES.values():
        assert set(spec.rule_names) <= set(RULES), spec.name
        assert spec.name in LrpParams.model_fields["composite"].description
    selectable = [n for n, r in LRP_RULES.items() if r.selectable]
    assert LrpParams.model_json_schema()["properties"]["rule"]["enum"] == selectable
    for name in selectable:
        assert LrpParams(rule=name).rule == name
    for name in set(LRP_RULES) - set(selectable):
        with pytest.raises(ValidationError):
            LrpParams(rule=name)
    for name in COMPOSITES:
        assert LrpParams(composite=name).composite == name
    with pytest.raises(ValidationError):
        LrpParams(composite="epsilon_everywhere")


def test_params_validation():
    assert LrpParams().rule == "epsilon" and LrpParams().epsilon == 0.25 and LrpParams().bias is True
    assert LrpParams(rule="alpha_beta", alpha=2, beta=1).alpha == 2
    with pytest.raises(ValidationError, match="alpha must equal beta"):
        LrpParams(rule="alpha_beta", alpha=2, beta=0)
    with pytest.raises(ValidationError):
        LrpParams(rule="zplus")
    with pytest.raises(ValidationError):
        LrpParams(epsilon=-1)
    with pytest.raises(ValidationError):
        LrpParams(composite="epsilon_plus")
    assert LrpParams(composite="none").composite is None
    with pytest.raises(ValidationError):
        DeepTaylorParams(input_rule="flat")
    with pytest.raises(ValidationError):
        DeepLiftParams(baseline="gray")
    with pytest.raises(ValidationError):
        DeepLiftParams(rule="linear")
    with pytest.raises(ValidationError):
        DeepLiftParams(blur_sigma=0)


# ---- Eq. 11: conservation layer by layer -------------------------------------------------------------


def bias_free_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(16, 16, 3, bias=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 32, bias=False),
        nn.ReLU(),
        nn.Linear(32, 10, bias=False),
    )


def relevance_by_layer(m, x, target, params):
    """(input relevance, [(module, its output z, relevance at its output)]) read with tensor hooks:
    during an LRP pass the gradient flowing through a tensor is its relevance."""
    applicability(m)  # the one-off analysis pass (cached) runs before the hooks are in place
    rows, handles = [], []
    for mod in m.module:

        def hook(mod, inp, out):
            row = [mod, out.detach(), None]
            rows.append(row)
            out.register_hook(lambda g, row=row: row.__setitem__(2, g.detach()))

        handles.append(mod.register_forward_hook(hook))
    try:
        a = attribute(m, x, target, "lrp", params)
    finally:
        for h in handles:
            h.remove()
    return a, rows


def test_lrp_zero_conserves_relevance_layer_by_layer():
    m = wrap(bias_free_net(), "biasfree", size=16)
    x = image_batch(m, 1)
    a, rows = relevance_by_layer(m, x, 4, {"rule": "zero", "bias": False})
    logit = a.meta[0]["logit"]
    sums = [float(a.maps.sum())] + [float(r.sum()) for _, _, r in rows]
    assert sums[-1] == pytest.approx(logit, rel=1e-6)
    for s in sums:
        assert s == pytest.approx(logit, rel=1e-5)


def test_lrp_epsilon_conserves_up_to_the_absorbed_share():
    """LRP-epsilon's exact law: sum_i R_i = sum_j R_j z_j / (z_j + eps sign z_j) at conv/linear layers
    (eps absorbs relevance), the same with the 1e-6 stabiliser at average pools, sum_in = sum_out
    through ReLU and max-pooling."""
    eps = 0.25
    m = wrap(bias_free_net(), "biasfree", size=16)
    x = image_batch(m, 1)
    a, rows = relevance_by_layer(m, x, 4, {"rule": "epsilon", "epsilon": eps, "bias": False})
    r_in = a.maps
    for mod, z, r_out in rows:
        if isinstance(mod, (nn.Conv2d, nn.Linear, nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            e = eps if isinstance(mod, (nn.Conv2d, nn.Linear)) else 1e-6
            expected = float((r_out * z / (z + e * torch.where(z >= 0, 1.0, -1.0))).sum())
        else:
            expected = float(r_out.sum())
        assert float(r_in.sum()) == pytest.approx(expected, rel=2e-6, abs=1e-9), type(mod).__name__
        r_in = r_out
    assert abs(float(a.maps.sum())) < abs(a.meta[0]["logit"])  # the absorbed share is real


def test_head_bias_share():
    """With the bias (LRP-0), the relevance reaching the head's input is the logit minus the bias share."""
    m = model("resnet18", 64)
    fc = m.module.fc
    seen = {}

    def pre(mod, inp):
        inp[0].register_hook(lambda g: seen.__setitem__("r", g.detach()))

    h = fc.register_forward_pre_hook(pre)
    try:
        a = attribute(m, image_batch(m, 1), 6, "lrp", {"rule": "zero"})
    finally:
        h.remove()
    assert float(seen["r"].sum()) == pytest.approx(a.meta[0]["logit"] - float(fc.bias[6]), rel=1e-5)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.c0 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.c1 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.fc = nn.Linear(4 * 8 * 8, 10, bias=False)
        self.kept = {}

    def forward(self, x):
        a = F.relu(self.c0(x))
        b = self.c1(a)
        s = b + a
        if s.requires_grad:  # the explained pass (not the loader's or the analysis' dummy passes)
            for name, t in (("a", a), ("b", b)):
                self.kept[name] = t.detach()
                t.register_hook(lambda g, name=name: self.kept.__setitem__("R" + name, g.detach()))
            s.register_hook(lambda g: self.kept.__setitem__("Rs", g.detach()))
        return self.fc(F.relu(s).flatten(1))


def test_residual_addition_splits_in_proportion():
    torch.manual_seed(0)
    net = Residual()
    m = wrap(net, "res", size=8)
    x = image_batch(m, 1)
    att = attribute(m, x, 1, "lrp", {"rule": "zero", "bias": False})
    k = net.kept
    s = k["a"] + k["b"]
    share_b = torch.where(s != 0, k["b"] / torch.where(s != 0, s, 1.0), 0.0) * k["Rs"]  # LRP-0: b / (a + b)
    # a feeds both the addition and c1: its relevance is its addition share plus what c1 sends back
    assert torch.allclose(k["Rb"], share_b, atol=1e-6 * float(k["Rs"].abs().max()))
    assert float(att.maps.sum()) == pytest.approx(att.meta[0]["logit"], rel=1e-4)


def test_deep_taylor_is_positive_and_conservative():
    """z+ in hidden layers and z^B at the input: for a positive logit and an input inside the box,
    every relevance is >= 0 and they sum to the logit (bias-free z+ conserves)."""
    m = model("vgg11", 32)
    x = image_batch(m, 1, seed=2)
    with torch.no_grad():
        logits = m.module(x)[0]
    target = int(logits.argmax())
    assert logits[target] > 0
    for rule in ("zbox", "wsquare"):
        a = attribute(m, x, target, "deep_taylor", {"input_rule": rule})
        assert float(a.maps.min()) >= -1e-6 * float(a.maps.max())
        assert float(a.maps.sum()) == pytest.approx(float(logits[target]), rel=1e-4)


def test_composite_layer_mapping():
    """The documented mapping: layer 0 / other convs / dense layers."""
    lo, hi = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)

    def names(composite):
        ch = lrp_chooser(LrpParams(composite=composite), lo, hi)
        return [ch(0, True).name, ch(1, True).name, ch(2, False).name]

    assert names("epsilon_plus_flat") == ["flat", "zplus", "epsilon(0.25)"]
    assert names("epsilon_gamma_box") == ["zbox", "gamma", "epsilon(0.25)"]
    assert names("epsilon_alpha2_beta1") == ["alpha2beta1", "alpha2beta1", "epsilon(0.25)"]
    m = model("resnet18", 64)
    a = attribute(m, image_batch(m, 1), 0, "lrp", {"composite": "epsilon_gamma_box"})
    assert a.used_params["layer_rules"] == {"zbox": 1, "gamma": 19, "epsilon(0.25)": 1}


LIBRARY_MATRIX = [
    ("shapes", 64, p)
    for p in (
        {"rule": "zero"},
        {"rule": "epsilon"},
        {"rule": "gamma"},
        {"rule": "alpha_beta", "alpha": 2, "beta": 1},
        {"composite": "epsilon_plus_flat"},
        {"composite": "epsilon_gamma_box"},
        {"composite": "epsilon_alpha2_beta1"},
    )
] + [(arch, size, {"composite": "epsilon_gamma_box"}) for arch, size in (("alexnet", 64), ("resnet34", 32))]


@pytest.mark.parametrize("arch,size,params", LIBRARY_MATRIX)
def test_lrp_runs_on_supported_models(arch, size, params):
    m = model(arch, size)
    assert applicability(m)["lrp"] is None and applicability(m)["deep_taylor"] is None
    a = attribute(m, image_batch(m, 2), torch.tensor([0, 9]), "lrp", params)
    assert a.maps.shape == (2, 3, size, size) and torch.isfinite(a.maps).all() and a.maps.abs().max() > 0
    assert set(a.meta[0]) == {"logit", "relevance_sum"}


# ---- layers no rule covers ------------------------------------------------------------------------------


class Block(nn.Module):
    def __init__(self, act: nn.Module | None):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = act

    def forward(self, x):
        x = self.conv(x)
        return self.act(x) if self.act is not None else F.gelu(x)


class Tiny(nn.Module):
    def __init__(self, act: nn.Module | None, norm: bool = False):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU())
        self.block = Block(act)
        self.norm = nn.LayerNorm(4 * 8 * 8) if norm else nn.Identity()
        self.head = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        return self.head(self.norm(self.block(self.stem(x)).flatten(1)))


UNSUPPORTED = [
    (lambda: Tiny(nn.SiLU()), "'block.act' (SiLU)", "silu"),
    (lambda: Tiny(nn.Hardswish()), "'block.act' (Hardswish)", "hardswish"),
    (lambda: Tiny(None), "'block' (Block)", "gelu"),
    (lambda: Tiny(nn.ReLU(), norm=True), "'norm' (LayerNorm)", "layer_norm"),
]


@pytest.mark.parametrize("build,where,func", UNSUPPORTED, ids=["silu", "hardswish", "functional-gelu", "layernorm"])
def test_uncovered_layers_are_refused(build, where, func):
    torch.manual_seed(0)
    m = wrap(build(), "tiny", size=8)
    reasons = applicability(m)
    for method in ("lrp", "deep_taylor", "deeplift"):
        assert where in reasons[method] and func in reasons[method]
        with pytest.raises(MethodError, match="cannot be applied") as e:
            attribute(m, image_batch(m, 1), 0, method)
        assert where in e.value.detail and e.value.status == 422
    assert reasons["fem"] is None or "fem" not in reasons  # FEM does not propagate relevance
    # the run-time guard: even without the applicability check no map comes back
    with pytest.raises(MethodError, match=func):
        relevance_pass(
            m,
            image_batch(m, 1),
            torch.tensor([0]),
            lambda i, conv: lrp_chooser(LrpParams(), 0, 1)(i, conv),
            True,
            "lrp",
        )
    from workers.explain.deeplift import deeplift

    with pytest.raises(MethodError, match=func):
        x = image_batch(m, 1)
        deeplift(m.module, x, torch.zeros_like(x), torch.tensor([0]), "rescale")


def test_supported_models_list_the_structure_methods():
    for arch, size in (("vgg16_bn", 32), ("resnet18", 64), ("shapes", 64)):
        card = model(arch, size).card(applicability(model(arch, size)))
        assert {"lrp", "deep_taylor", "deeplift", "fem"} <= set(card["methods"])
