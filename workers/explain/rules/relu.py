"""Per-call rectifier rules for DeconvNet (§4.1) and guided backpropagation (§4.3).

Each rule is a ``torch.autograd.Function`` handed every *call* of a rectifier
by the engine's :class:`~workers.explain.engine.RuleMode` (so a ReLU module
called twice, an in-place ReLU and a functional ``F.relu`` each get it once per
call). The forward value is the function's own; only the backward changes:

=================  ===============================================
plain gradient     g_in = f'(x) * g
DeconvNet          g_in = max(g, 0)             (forward ignored)
guided backprop    g_in = f'(x) * max(g, 0)     (forward mask AND positive signal)
=================  ===============================================

For ReLU f'(x) = 1[x > 0]. ReLU6 (``F.relu6``, ``F.hardtanh`` with
``min_val=0`` as ``nn.ReLU6`` calls it) and LeakyReLU are treated as the same
kind of rectifier with their own f' (1[0 < x < max]; 1 or the slope).
Everything else (ELU, GELU, SiLU, Hardswish, clamp, ``hardtanh`` with a
non-zero lower bound...) is not intercepted and passes the plain gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from workers.explain.engine import FUNCTION_KINDS, Rule, RuleMode, call_arg, finish_inplace, register_kind

register_kind("relu6", {F.relu6: False, F.hardtanh: False, F.hardtanh_: True})
register_kind("leaky_relu", {F.leaky_relu: False, F.leaky_relu_: True})

RECTIFIER_KINDS = ("relu", "relu6", "leaky_relu")


class _Rectifier:
    """One parsed rectifier call: its input, in-place flag, forward and derivative."""

    __slots__ = ("x", "inplace", "kind", "param")

    def __init__(self, x: torch.Tensor, inplace: bool, kind: str, param: float):
        self.x, self.inplace, self.kind, self.param = x, inplace, kind, param

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "relu":
            return torch.relu(x)
        if self.kind == "relu6":
            return torch.clamp(x, 0.0, self.param)
        return F.leaky_relu(x, self.param)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        """f'(x) as autograd computes it (0 at the kinks)."""
        if self.kind == "relu":
            return x > 0
        if self.kind == "relu6":
            return (x > 0) & (x < self.param)
        return torch.where(x > 0, torch.ones_like(x), torch.full_like(x, self.param))


def parse_rectifier(func: Callable, args: tuple, kwargs: dict) -> _Rectifier | None:
    """The rectifier a call computes, or None when the call is not one (hardtanh with min_val != 0):
    the one parser of rectifier calls (the rectifier rules and DeepLIFT's use it)."""
    x = call_arg(args, kwargs, 0, "input")
    if func in FUNCTION_KINDS["relu"]:
        inplace = FUNCTION_KINDS["relu"][func] or bool(call_arg(args, kwargs, 1, "inplace", False))
        return _Rectifier(x, inplace, "relu", 0.0)
    if func is F.relu6:
        return _Rectifier(x, bool(call_arg(args, kwargs, 1, "inplace", False)), "relu6", 6.0)
    if func is F.hardtanh or func is F.hardtanh_:
        lo = float(call_arg(args, kwargs, 1, "min_val", -1.0))
        hi = float(call_arg(args, kwargs, 2, "max_val", 1.0))
        if lo != 0.0 or hi <= 0.0:
            return None
        inplace = func is F.hardtanh_ or bool(call_arg(args, kwargs, 3, "inplace", False))
        return _Rectifier(x, inplace, "relu6", hi)
    if func is F.leaky_relu or func is F.leaky_relu_:
        slope = float(call_arg(args, kwargs, 1, "negative_slope", 0.01))
        inplace = func is F.leaky_relu_ or bool(call_arg(args, kwargs, 2, "inplace", False))
        return _Rectifier(x, inplace, "leaky_relu", slope)
    return None


def _mode(mode) -> str:
    """A rule's mode: "guided", "deconv", or an object whose ``.mode`` names the rule of the
    backward pass now running ("plain" | "guided" | "deconv"; the fused pass switches it)."""
    return mode if isinstance(mode, str) else mode.mode


class _RectifiedBackward(torch.autograd.Function):
    """Forward: the rectifier itself. Backward by the mode: plain g * f'(x) (autograd's own),
    guided max(g, 0) * f'(x), DeconvNet max(g, 0).

    Only the (boolean where possible) derivative is saved, never ``x``: an
    in-place caller overwrites ``x`` right after this call."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, rect: _Rectifier, mode) -> torch.Tensor:
        ctx.mode = mode
        if mode != "deconv":
            ctx.save_for_backward(rect.derivative(x))
        return rect.forward(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        mode = _mode(ctx.mode)
        if mode == "plain":
            (d,) = ctx.saved_tensors
            if d.dtype == torch.bool:
                return torch.where(d, g, torch.zeros((), dtype=g.dtype, device=g.device)), None, None
            return g * d.to(g.dtype), None, None
        g = g.clamp(min=0)
        if mode == "guided":
            (d,) = ctx.saved_tensors
            g = g * d.to(g.dtype)
        return g, None, None


class ReluRuleFunction(torch.autograd.Function):
    """ReLU itself with a chosen backward, in place when the caller's ReLU is (no copy):
    ``mode`` is "guided", "deconv", or an object whose ``.mode`` names the rule of the
    backward pass now running (the fused pass switches it between backward calls; "plain"
    is autograd's own ReLU backward). The saved tensor is the output, as autograd's ReLU
    saves it: out > 0 exactly where x > 0, so the masks equal relu_rules' 1[x > 0]."""

    @staticmethod
    def forward(ctx, x, inplace: bool, mode):
        if inplace:
            ctx.mark_dirty(x)
            out = x.relu_()
        else:
            out = torch.relu(x)
        ctx.mode = mode
        if mode != "deconv":
            ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        mode = _mode(ctx.mode)
        if mode == "plain":
            (out,) = ctx.saved_tensors
            return torch.ops.aten.threshold_backward(g, out, 0), None, None
        g = g.clamp(min=0)
        if mode == "guided":
            (out,) = ctx.saved_tensors
            g = torch.ops.aten.threshold_backward(g, out, 0)
        return g, None, None


def relu_rule_call(rect: _Rectifier, mode):
    """A grad-carrying ReLU call through :class:`ReluRuleFunction` (in place when asked)."""
    return ReluRuleFunction.apply(rect.x, rect.inplace, mode)


class RectifierRule(Rule):
    """The engine rule for every rectifier call: ``mode`` is "guided", "deconv", or the fused
    pass's switch (see :func:`_mode`)."""

    def __init__(self, mode):
        self.mode = mode

    def call(self, func: Callable, args: tuple, kwargs: dict):
        rect = parse_rectifier(func, args, kwargs)
        if rect is None:
            return func(*args, **kwargs)
        x = rect.x
        if not (torch.is_grad_enabled() and x.requires_grad):
            out = rect.forward(x)
        elif rect.kind == "relu":
            return relu_rule_call(rect, self.mode)
        else:
            out = _RectifiedBackward.apply(x, rect, self.mode)
        return finish_inplace(x, out, rect.inplace)


def rectifier_mode(guided: bool | object) -> RuleMode:
    """A RuleMode applying the guided (True) or DeconvNet (False) rule to every rectifier call,
    or the rule a switch object names at each backward call (the fused pass)."""
    rule = RectifierRule(("guided" if guided else "deconv") if isinstance(guided, bool) else guided)
    return RuleMode({kind: rule for kind in RECTIFIER_KINDS})
