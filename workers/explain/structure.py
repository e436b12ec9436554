"""The structure family (§5): LRP (§5.1) and deep Taylor decomposition (§5.1.1); DeepLIFT
(§5.2) lives in ``workers.explain.deeplift``, FEM (§5.3) in ``workers.explain.fem``.

LRP is a modified backward pass through the one engine
(``workers.explain.engine.RuleMode``): every call of conv2d / linear is computed
by a :class:`~workers.explain.rules.lrp.RelevanceFunction` whose backward is the
layer's relevance rule, residual additions and average pools by the proportional
("Norm") rule, ReLU and max-pooling keep their gradient (relevance passes through
a ReLU unchanged; max-pooling is winner-take-all). The relevance at the output is
the target's pre-softmax score, so the gradient reaching the input *is* the
relevance map. BatchNorm is folded into the conv before it (``canonize``).

Rule by layer (layer 0 = the first conv/linear call of the forward pass):

============================  =================  ===================  ==============
method / composite            layer 0            other conv2d         linear (dense)
============================  =================  ===================  ==============
lrp rule=zero|epsilon|...     the rule           the rule             the rule
lrp epsilon_plus_flat         flat               z+ (alpha1beta0)     epsilon
lrp epsilon_gamma_box         z^B (if conv)      gamma                epsilon
lrp epsilon_alpha2_beta1      alpha2beta1        alpha2beta1          epsilon
deep_taylor                   z^B or w^2         z+ (no bias)         z+ (no bias)
============================  =================  ===================  ==============
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import torch

from schemas.methods.structure import COMPOSITES, DeepTaylorParams, LrpParams
from workers.errors import MethodError
from workers.explain.base import Attribution, Context, register, target_scores
from workers.explain.canonize import COVERED, Analysis, CheckedRuleMode, family_check, model_analysis
from workers.explain.engine import Rule, call_arg, finish_inplace
from workers.explain.rules.linear import CONV_ARGS, LINEAR_ARGS, bind_batch_norm, bind_linear
from workers.explain.rules.lrp import RULES, STABILIZER, Epsilon, LinearRule, NormFunction, RelevanceFunction, RuleArgs
from workers.models.loading import LoadedModel

Chooser = Callable[[int, bool], LinearRule]  # (layer number, is conv) -> rule


# ---- choosing rules ------------------------------------------------------------------------------------


def lrp_chooser(params: LrpParams, low: torch.Tensor, high: torch.Tensor) -> Chooser:
    """The rule of each conv/linear call: ``params.rule`` everywhere, or the composite's rule for
    the kind of layer (schemas.methods.structure.COMPOSITES)."""
    args = RuleArgs(params.epsilon, params.gamma, params.alpha, params.beta, params.bias, low, high)
    if params.composite is None:
        one = RULES[params.rule](args)
        return lambda i, conv: one
    spec = COMPOSITES.get(params.composite)
    if spec is None:
        raise MethodError(f"unknown composite {params.composite!r}", field="composite")
    built = {name: RULES[name](args) for name in spec.rule_names}
    return lambda i, conv: built[spec.rule_for(i == 0, conv)]


def deep_taylor_chooser(params: DeepTaylorParams, low: torch.Tensor, high: torch.Tensor) -> Chooser:
    """z^B or w^2 at the first layer (``input_rule``), bias-free z+ at every other one."""
    args = RuleArgs(bias=False, low=low, high=high)
    first, hidden = RULES[params.input_rule](args), RULES["zplus"](args)
    return lambda i, conv: first if i == 0 else hidden


# ---- per-call rules of the LRP pass ----------------------------------------------------------------


class LinearLayerRule(Rule):
    """conv2d and linear calls: numbered in call order (layer 0 = first), folded BN params used."""

    def __init__(self, choose: Chooser, analysis: Analysis):
        self.choose = choose
        self.analysis = analysis
        self.count = 0
        self.used: list[str] = []
        self.pending: dict[int, torch.Tensor] = {}  # id(bn running_mean) -> the output it must receive

    def call(self, func, args, kwargs):
        conv = func is torch.conv2d
        a, w, b, f = bind_linear(func, args, kwargs, CONV_ARGS if conv else LINEAR_ARGS)
        fold = self.analysis.folds.get(id(w))
        if fold is not None:
            w, b = fold.weight.to(a), fold.bias.to(a)
        rule = self.choose(self.count, conv)
        self.count += 1
        self.used.append(rule.name)
        if rule.name == "zbox" and a.dim() != 4:
            raise MethodError("the z^B rule needs an image-shaped input at the first layer")
        out = RelevanceFunction.apply(a, f, w, b, rule)
        if fold is not None:
            self.pending[fold.bn_key] = out
        return out


class BatchNormRule(Rule):
    """A BN folded into its layer returns its input; any other BN is an affine layer (epsilon rule)."""

    def __init__(self, layers: LinearLayerRule, bias: bool):
        self.layers = layers
        self.bias = bias
        self.rule = Epsilon(STABILIZER, bias)

    def call(self, func, args, kwargs):
        x = call_arg(args, kwargs, 0, "input")
        rm = call_arg(args, kwargs, 1, "running_mean")
        if id(rm) in self.layers.analysis.folded_bn:
            expected = self.layers.pending.pop(id(rm), None)
            if expected is not x:
                raise MethodError("a BatchNorm folded into its layer was called on another input")
            return x
        x, scale, shift, f = bind_batch_norm(args, kwargs)
        return RelevanceFunction.apply(x, f, scale, shift, self.rule)


class AddRule(Rule):
    """Residual additions: each summand gets relevance in proportion to its contribution
    (a_k / (a_1 + a_2 + 1e-6 sign)); an added constant acts as a bias."""

    def __init__(self, bias: bool, eps: float = STABILIZER):
        self.bias = bias
        self.eps = eps

    def call(self, func, args, kwargs):
        inplace = func in (torch.Tensor.add_, torch.Tensor.__iadd__)
        a = call_arg(args, kwargs, 0, "input")
        other = call_arg(args, kwargs, 1, "other")
        alpha = kwargs.get("alpha", 1)
        if not isinstance(a, torch.Tensor):  # __radd__ with a python number first
            a, other = other, a
        if isinstance(other, torch.Tensor) and other.requires_grad:
            out = NormFunction.apply(lambda p, q: torch.add(p, q, alpha=alpha), self.eps, a, other)
        elif self.bias:
            out = NormFunction.apply(lambda p: torch.add(p, other, alpha=alpha), self.eps, a)
        else:
            with torch.no_grad():
                shift = torch.add(torch.zeros_like(a), other, alpha=alpha)
            out = a + shift  # relevance passes unchanged: the constant takes none
        return finish_inplace(a, out, inplace)


class PoolRule(Rule):
    """Average pooling, adaptive average pooling, mean and sum over feature dimensions: linear layers
    with positive weights."""

    def __init__(self, eps: float = STABILIZER):
        self.eps = eps

    def call(self, func, args, kwargs):
        x = call_arg(args, kwargs, 0, "input")
        rest, kw = args[1:], {k: v for k, v in kwargs.items() if k != "input"}
        return NormFunction.apply(lambda p: func(p, *rest, **kw), self.eps, x)


def relevance_pass(
    model: LoadedModel,
    x: torch.Tensor,
    targets: torch.Tensor,
    choose: Chooser,
    bias: bool,
    method: str,
    norm_eps: float = STABILIZER,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(relevance at the input (N, C, H, W), logits, rule per conv/linear call).

    ``norm_eps``: stabiliser of the proportional rule at additions and average pools."""
    analysis = model_analysis(model)
    layers = LinearLayerRule(choose, analysis)
    pool = PoolRule(norm_eps)
    rules = {
        "conv2d": layers,
        "linear": layers,
        "batch_norm": BatchNormRule(layers, bias),
        "add": AddRule(bias, norm_eps),
        "avg_pool2d": pool,
        "adaptive_avg_pool2d": pool,
        "mean": pool,
        "sum": pool,
    }
    with torch.enable_grad():
        xi = x.detach().requires_grad_(True)
        with CheckedRuleMode(rules, COVERED["lrp"], method):
            logits = model.module(xi)
        if logits.dim() != 2:
            raise MethodError(f"{method} needs (N, classes) logits, got shape {tuple(logits.shape)}")
        seed = torch.zeros_like(logits).scatter(1, targets.view(-1, 1), target_scores(logits, targets).view(-1, 1))
        (rel,) = torch.autograd.grad(logits, xi, seed.detach())
    return rel.detach(), logits.detach(), layers.used


def _lrp_meta(rel: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> list[dict]:
    s = target_scores(logits, targets)
    tot = rel.flatten(1).sum(1)
    return [{"logit": float(s[i]), "relevance_sum": float(tot[i])} for i in range(rel.shape[0])]


@register("lrp", applicable=family_check("lrp"))
def lrp(ctx: Context) -> Attribution:
    p = ctx.params
    low, high = ctx.model.input_bounds()
    ctx.progress(0.0)
    lrp0 = p.composite is None and p.rule == "zero"  # Eq. 12 unstabilised, also at additions and pools
    rel, logits, used = relevance_pass(
        ctx.model, ctx.x, ctx.targets, lrp_chooser(p, low, high), p.bias, "lrp", 0.0 if lrp0 else STABILIZER
    )
    ctx.progress(1.0)
    params = p.model_dump()
    params["layer_rules"] = dict(Counter(used))
    return Attribution(rel, used_params=params, meta=_lrp_meta(rel, logits, ctx.targets))


@register("deep_taylor", applicable=family_check("lrp"))
def deep_taylor(ctx: Context) -> Attribution:
    p = ctx.params
    low, high = ctx.model.input_bounds()
    ctx.progress(0.0)
    rel, logits, used = relevance_pass(
        ctx.model, ctx.x, ctx.targets, deep_taylor_chooser(p, low, high), False, "deep_taylor"
    )
    ctx.progress(1.0)
    return Attribution(
        rel,
        used_params={"input_rule": p.input_rule, "layer_rules": dict(Counter(used))},
        meta=_lrp_meta(rel, logits, ctx.targets),
    )
