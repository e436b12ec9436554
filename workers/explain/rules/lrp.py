"""LRP relevance rules for one linear call (§5.1 Eq. 12-15, §5.1.1), in the
gradient x input formulation.

A rule maps the relevance ``R`` at a layer's output to the relevance at its
input. For a linear function ``z = f(a, w, b)`` (conv2d, linear) every rule is
``R_in = sum_k  a_k (.) J(w_k)^T [ R_k / stabilise(z_k) ]`` for some modified
inputs ``a_k`` and weights ``w_k``: the transposed Jacobian ``J(w)^T`` is a
vector-Jacobian product of ``f`` (a transposed convolution for conv2d), computed
by autograd on ``f`` itself, so one implementation covers conv2d and linear.

The rules are called once per *call* of the function (see
``workers.explain.engine``) through :class:`RelevanceFunction`, an
``autograd.Function`` whose forward is the layer's ordinary output and whose
backward is the rule. The gradient that reaches the network's input is then the
relevance itself.

Stabiliser: ``stabilise(z, e) = z + e * sign(z)`` with sign(0) = +1 (zero
outputs move to +e). LRP-epsilon uses the request's epsilon; the other rules a
fixed 1e-6 (as Zennit does); LRP-0 divides only where z != 0 (0/0 -> 0).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from schemas.methods.structure import LRP_RULES
from workers.explain.rules.linear import LayerFn, vjp

STABILIZER = 1e-6


def stabilise(z: torch.Tensor, eps: float) -> torch.Tensor:
    if eps == 0.0:
        return torch.where(z == 0, torch.ones_like(z), z)
    return z + eps * torch.where(z >= 0, torch.ones_like(z), -torch.ones_like(z))


def _pos(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.clamp(min=0)


def _neg(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.clamp(max=0)


class LinearRule:
    """Relevance rule of a linear layer: ``relevance(f, a, w, b, R) -> R_in``."""

    name = "rule"

    def relevance(
        self, f: LayerFn, a: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, r: torch.Tensor
    ) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


@dataclass
class Epsilon(LinearRule):
    """Eq. 13 (Eq. 12 with epsilon = 0): R_i = a_i sum_j w_ij R_j / (z_j + eps sign z_j);
    ``bias=False`` leaves the bias out of z_j ("LRP-epsilon ignore bias", Fig. 9(c))."""

    epsilon: float = 0.25
    bias: bool = True

    @property
    def name(self) -> str:  # type: ignore[override]
        return "zero" if self.epsilon == 0 else f"epsilon({self.epsilon:g})"

    def relevance(self, f, a, w, b, r):
        z = f(a, w, b if self.bias else None)
        return a * vjp(f, a, w, r / stabilise(z, self.epsilon))


@dataclass
class Gamma(LinearRule):
    """Eq. 14, generalised to inputs of both signs (Montavon et al. 2019; Andeol et al. 2021):
    for outputs z_j > 0 the positive contributions are favoured,
    (w + gamma w+) on positive inputs and (w + gamma w-) on negative ones; for z_j < 0 the
    negative contributions, symmetrically. With non-negative inputs (every layer after a ReLU)
    this is exactly Eq. 14. The bias b + gamma b+ (resp. b + gamma b-) enters the denominator
    unless ``bias=False``."""

    gamma: float = 0.25
    bias: bool = True
    name = "gamma"

    def relevance(self, f, a, w, b, r):
        g = self.gamma
        wp, wn = w + g * w.clamp(min=0), w + g * w.clamp(max=0)
        bb = b if self.bias else None
        bp = None if bb is None else bb + g * bb.clamp(min=0)
        bn = None if bb is None else bb + g * bb.clamp(max=0)
        ap, an = a.clamp(min=0), a.clamp(max=0)
        z = f(a, w, b)  # the layer's real output decides which side a neuron is on
        zp = f(ap, wp, bp) + f(an, wn, None)
        zn = f(ap, wn, bn) + f(an, wp, None)
        sp = r * (z > 0) / stabilise(zp, STABILIZER)
        sn = r * (z < 0) / stabilise(zn, STABILIZER)
        return ap * (vjp(f, a, wp, sp) + vjp(f, a, wn, sn)) + an * (vjp(f, a, wn, sp) + vjp(f, a, wp, sn))


@dataclass
class AlphaBeta(LinearRule):
    """Eq. 15: alpha times the positive contributions (a w)+ over their sum, minus beta times
    the negative ones (a w)- over theirs; (a w)+ = a+ w+ + a- w- (inputs of both signs).
    z+ (deep Taylor's z+ rule) is alpha=1, beta=0. Biases b+ / b- join the sums unless
    ``bias=False``."""

    alpha: float = 1.0
    beta: float = 0.0
    bias: bool = True

    @property
    def name(self) -> str:  # type: ignore[override]
        return "zplus" if (self.alpha, self.beta) == (1.0, 0.0) else f"alpha{self.alpha:g}beta{self.beta:g}"

    def relevance(self, f, a, w, b, r):
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        bb = b if self.bias else None
        ap, an = a.clamp(min=0), a.clamp(max=0)
        zp = f(ap, wp, _pos(bb)) + f(an, wn, None)
        sp = r / stabilise(zp, STABILIZER)
        out = self.alpha * (ap * vjp(f, a, wp, sp) + an * vjp(f, a, wn, sp))
        if self.beta != 0:
            zn = f(ap, wn, _neg(bb)) + f(an, wp, None)
            sn = r / stabilise(zn, STABILIZER)
            out = out - self.beta * (ap * vjp(f, a, wn, sn) + an * vjp(f, a, wp, sn))
        return out


def ZPlus(bias: bool = True) -> AlphaBeta:
    return AlphaBeta(1.0, 0.0, bias)


@dataclass
class ZBox(LinearRule):
    """z^B rule of deep Taylor decomposition for a box-bounded input l <= a <= h:
    z_j = sum_i a_i w_ij - l_i w+_ij - h_i w-_ij and
    R_i = sum_j (a_i w_ij - l_i w+_ij - h_i w-_ij) R_j / z_j. Biases cancel out of z_j."""

    low: torch.Tensor  # broadcastable to the layer input (e.g. (1, C, 1, 1))
    high: torch.Tensor
    name = "zbox"

    def relevance(self, f, a, w, b, r):
        lo = self.low.to(a).expand_as(a)
        hi = self.high.to(a).expand_as(a)
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        z = f(a, w, None) - f(lo, wp, None) - f(hi, wn, None)
        s = r / stabilise(z, STABILIZER)
        return a * vjp(f, a, w, s) - lo * vjp(f, a, wp, s) - hi * vjp(f, a, wn, s)


class WSquare(LinearRule):
    """w^2 rule of deep Taylor decomposition (unbounded input): R_i = sum_j w_ij^2 / sum_i' w_i'j^2 R_j."""

    name = "wsquare"

    def relevance(self, f, a, w, b, r):
        w2 = w * w
        z = f(torch.ones_like(a), w2, None)
        return vjp(f, a, w2, r / stabilise(z, STABILIZER))


class Flat(LinearRule):
    """Flat rule (w^2 with all weights equal): the relevance is spread uniformly over the receptive field."""

    name = "flat"

    def relevance(self, f, a, w, b, r):
        w1 = torch.ones_like(w)
        z = f(torch.ones_like(a), w1, None)
        return vjp(f, a, w1, r / stabilise(z, STABILIZER))


# ---- the rules by name (the names, descriptions and composites: schemas/methods/structure.py) ----


@dataclass(frozen=True)
class RuleArgs:
    """What a rule is built from: the request's parameters and the model's input box."""

    epsilon: float = 0.25
    gamma: float = 0.25
    alpha: float = 1.0
    beta: float = 0.0
    bias: bool = True
    low: torch.Tensor | None = None
    high: torch.Tensor | None = None


RULES: dict[str, Callable[[RuleArgs], LinearRule]] = {}


def rule(name: str) -> Callable[[Callable[[RuleArgs], LinearRule]], Callable[[RuleArgs], LinearRule]]:
    """Register the builder of the rule ``name`` (declared in ``schemas.methods.structure.LRP_RULES``)."""
    if name not in LRP_RULES:
        raise KeyError(f"{name!r} is not in schemas.methods.structure.LRP_RULES; declare it there first")

    def deco(build: Callable[[RuleArgs], LinearRule]) -> Callable[[RuleArgs], LinearRule]:
        if name in RULES:
            raise ValueError(f"LRP rule {name!r} implemented twice")
        RULES[name] = build
        return build

    return deco


rule("zero")(lambda a: Epsilon(0.0, a.bias))
rule("epsilon")(lambda a: Epsilon(a.epsilon, a.bias))
rule("gamma")(lambda a: Gamma(a.gamma, a.bias))
rule("alpha_beta")(lambda a: AlphaBeta(a.alpha, a.beta, a.bias))
rule("alpha2_beta1")(lambda a: AlphaBeta(2.0, 1.0, a.bias))
rule("zplus")(lambda a: ZPlus(a.bias))
rule("flat")(lambda a: Flat())
rule("zbox")(lambda a: ZBox(a.low, a.high))
rule("wsquare")(lambda a: WSquare())


# ---- the autograd functions that apply a rule to one call ----


class RelevanceFunction(torch.autograd.Function):
    """Forward: the layer's output ``f(a, w, b)``. Backward: ``rule`` maps the relevance
    at the output (arriving as the gradient) to the relevance at ``a``."""

    @staticmethod
    def forward(ctx, a, f, w, b, rule):
        ctx.f, ctx.w, ctx.b, ctx.rule = f, w, b, rule
        ctx.save_for_backward(a)  # raises in backward if a later in-place op changed it
        return f(a, w, b)

    @staticmethod
    def backward(ctx, r):
        (a,) = ctx.saved_tensors
        with torch.no_grad():
            rin = ctx.rule.relevance(ctx.f, a.detach(), ctx.w, ctx.b, r)
        return rin, None, None, None, None


class NormFunction(torch.autograd.Function):
    """Relevance through a parameter-free linear op with positive weights, treated as a
    linear layer (Zennit's "Norm" rule): residual additions (each summand gets its share
    a_k / (a_1 + a_2) of the relevance), average pooling, adaptive average pooling, mean.

    ``f(*xs)`` is the op on its tensor operands; R_k = x_k (.) J_k^T [R / stabilise(z, eps)]
    (eps = 1e-6 as in Zennit; 0 for LRP-0, which divides only where z != 0)."""

    @staticmethod
    def forward(ctx, f, eps, *xs):
        ctx.f, ctx.eps = f, eps
        ctx.xs = [x.detach().clone() for x in xs]  # operands may be overwritten in place (out += identity)
        return f(*xs)

    @staticmethod
    def backward(ctx, r):
        with torch.enable_grad():
            xs = [x.requires_grad_(True) for x in ctx.xs]
            z = ctx.f(*xs)
            gs = torch.autograd.grad(z, xs, r / stabilise(z.detach(), ctx.eps))
        return (None, None, *[x.detach() * g for x, g in zip(xs, gs)])
