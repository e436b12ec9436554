"""DeepLIFT's per-call rules (§5.2, Eqs. 19-25): Rescale over the batch ``[x; x0]`` and
RevealCancel over ``[x; x0; D+; D-]``; the driver and the method are in
:mod:`workers.explain.deeplift`, whose docstring states the rules."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from workers.errors import MethodError
from workers.explain.engine import Rule, call_arg, finish_inplace
from workers.explain.rules.linear import bind_batch_norm, bind_linear, vjp
from workers.explain.rules.relu import parse_rectifier

TINY = 1e-12


def _quarters(t: torch.Tensor, n: int, k: int) -> list[torch.Tensor]:
    return [t[i * n : (i + 1) * n] for i in range(k)]


def _pool_args(func, args: tuple, kwargs: dict):
    """Call max_pool2d with the call's arguments but return_indices=True."""
    if call_arg(args, kwargs, 6, "return_indices", False):
        raise MethodError("deeplift: max-pooling that returns indices is not supported")
    args = tuple(args[1:6])
    kw = {k: v for k, v in kwargs.items() if k not in ("input", "return_indices")}
    return lambda y: F.max_pool2d(y, *args, return_indices=True, **kw)


def _place(top_grad: torch.Tensor, zx, zr, ix, ir, shape) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the window differences placed per input position, plain gradient)."""
    n, c = shape[0], shape[1]
    top = torch.maximum(zx, zr)
    cx = top_grad * (top - zr)  # nonzero where max(x) >= max(x0): at the arg-max of x
    cr = top_grad * (zx - top)  # nonzero where max(x) < max(x0): at the arg-max of x0
    flat = torch.zeros(n, c, math.prod(shape[2:]), dtype=top_grad.dtype, device=top_grad.device)
    placed = flat.clone().scatter_add_(2, ix.flatten(2), cx.flatten(2)).scatter_add_(2, ir.flatten(2), cr.flatten(2))
    plain = flat.scatter_add_(2, ix.flatten(2), top_grad.flatten(2))
    return placed.view(shape), plain.view(shape)


# ---- Rescale (2N) ------------------------------------------------------------------------------------


class _RescaleReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, n):
        z = y.clamp(min=0)
        yx, yr = y[:n], y[n:]
        dy = yx - yr
        dz = z[:n] - z[n:]
        ok = dy.abs() > TINY
        ctx.m = torch.where(ok, dz / torch.where(ok, dy, torch.ones_like(dy)), (yx > 0).to(y.dtype))
        ctx.n = n
        return z

    @staticmethod
    def backward(ctx, g):
        n = ctx.n
        return torch.cat([g[:n] * ctx.m, torch.zeros_like(g[n:])]), None


class _RescaleMaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, n, pool):
        z, idx = pool(y)
        # detached: views of the output kept on ctx would make a cycle (z -> grad_fn -> ctx -> z) that leaks the graph
        ctx.save = (z[:n].detach(), z[n:].detach(), idx[:n], idx[n:], (y[:n] - y[n:]).detach())
        ctx.n = n
        return z

    @staticmethod
    def backward(ctx, g):
        zx, zr, ix, ir, dy = ctx.save
        n = ctx.n
        placed, plain = _place(g[:n], zx, zr, ix, ir, dy.shape)
        ok = dy.abs() > TINY
        m = torch.where(ok, placed / torch.where(ok, dy, torch.ones_like(dy)), plain)
        return torch.cat([m, torch.zeros_like(m)]), None, None


class RescaleReLURule(Rule):
    def __init__(self, n: int):
        self.n = n

    def call(self, func, args, kwargs):
        rect = parse_rectifier(func, args, kwargs)
        return finish_inplace(rect.x, _RescaleReLU.apply(rect.x, self.n), rect.inplace)


class RescaleMaxPoolRule(Rule):
    def __init__(self, n: int, reveal_cancel: bool = False):
        self.n = n
        self.rc = reveal_cancel

    def call(self, func, args, kwargs):
        y = call_arg(args, kwargs, 0, "input")
        pool = _pool_args(func, args, kwargs)
        if self.rc:
            return _RCMaxPool.apply(y, self.n, pool)
        return _RescaleMaxPool.apply(y, self.n, pool)


# ---- RevealCancel (4N) ----------------------------------------------------------------------------


def _relu_step(t: torch.Tensor) -> torch.Tensor:
    return (t > 0).to(t.dtype)


class _RCReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y4, n):
        y, y0, dp, dn = _quarters(y4, n, 4)
        g = torch.relu
        z, z0 = g(y), g(y0)
        dz = z - z0
        zp = 0.5 * ((g(y0 + dp) - z0) + (z - g(y0 + dn)))  # Eq. 23
        zn = 0.5 * ((g(y0 + dn) - z0) + (z - g(y0 + dp)))  # Eq. 24
        okp, okn = dp.abs() > TINY, dn.abs() > TINY
        # Eq. 25, with the limit dy+ -> 0 (resp. dy- -> 0) where a group is empty
        ctx.mp = torch.where(
            okp, zp / torch.where(okp, dp, torch.ones_like(dp)), 0.5 * (_relu_step(y0) + _relu_step(y0 + dn))
        )
        ctx.mn = torch.where(
            okn, zn / torch.where(okn, dn, torch.ones_like(dn)), 0.5 * (_relu_step(y0) + _relu_step(y0 + dp))
        )
        ctx.dz, ctx.n = dz, n
        return torch.cat([z, z0, dz.clamp(min=0), dz.clamp(max=0)])

    @staticmethod
    def backward(ctx, g4):
        n = ctx.n
        gp, gn = g4[2 * n : 3 * n], g4[3 * n :]
        dz = ctx.dz
        mz = torch.where(dz > 0, gp, torch.where(dz < 0, gn, 0.5 * (gp + gn)))
        return torch.cat([torch.zeros_like(g4[: 2 * n]), ctx.mp * mz, ctx.mn * mz]), None


class _RCMaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y4, n, pool):
        z, idx = pool(y4[: 2 * n])
        zx, zr = z[:n], z[n:]
        dz = zx - zr
        ctx.save = (zx, zr, idx[:n], idx[n:], (y4[:n] - y4[n : 2 * n]).detach(), dz)
        ctx.n = n
        return torch.cat([zx, zr, dz.clamp(min=0), dz.clamp(max=0)])

    @staticmethod
    def backward(ctx, g4):
        zx, zr, ix, ir, dy, dz = ctx.save
        n = ctx.n
        gp, gn = g4[2 * n : 3 * n], g4[3 * n :]
        mz = torch.where(dz > 0, gp, torch.where(dz < 0, gn, 0.5 * (gp + gn)))
        placed, plain = _place(mz, zx, zr, ix, ir, dy.shape)
        ok = dy.abs() > TINY
        m = torch.where(ok, placed / torch.where(ok, dy, torch.ones_like(dy)), plain)
        return torch.cat([m.new_zeros((2 * n, *m.shape[1:])), m, m]), None, None


class _RCLinear(torch.autograd.Function):
    """conv / linear / batch-norm: values for x and x0 as usual; D+ and D- through w+ and w-."""

    @staticmethod
    def forward(ctx, a4, n, f, w, b):
        # parameters are cast to the pass's dtype here and again in backward (not kept in float64)
        w_, b_ = w.to(a4.dtype), None if b is None else b.to(a4.dtype)
        wp, wn = w_.clamp(min=0), w_.clamp(max=0)
        dp, dn = a4[2 * n : 3 * n], a4[3 * n :]
        y = f(a4[: 2 * n], w_, b_)
        yp = f(dp, wp, None) + f(dn, wn, None)
        yn = f(dp, wn, None) + f(dn, wp, None)
        ctx.f, ctx.w, ctx.n = f, w, n
        ctx.like = torch.zeros_like(dp)
        return torch.cat([y, yp, yn])

    @staticmethod
    def backward(ctx, g4):
        n, f, like = ctx.n, ctx.f, ctx.like
        w_ = ctx.w.to(like.dtype)
        wp, wn = w_.clamp(min=0), w_.clamp(max=0)
        del w_
        gp, gn = g4[2 * n : 3 * n], g4[3 * n :]
        mp = vjp(f, like, wp, gp) + vjp(f, like, wn, gn)
        mn = vjp(f, like, wp, gn) + vjp(f, like, wn, gp)
        zero = like.new_zeros((2 * n, *like.shape[1:]))
        return torch.cat([zero, mp, mn]), None, None, None, None


class RCLinearRule(Rule):
    def __init__(self, n: int, spec):
        self.n, self.spec = n, spec

    def call(self, func, args, kwargs):
        a, w, b, f = bind_linear(func, args, kwargs, self.spec)
        return _RCLinear.apply(a, self.n, f, w, b)


class RCBatchNormRule(Rule):
    def __init__(self, n: int):
        self.n = n

    def call(self, func, args, kwargs):
        x, scale, shift, f = bind_batch_norm(args, kwargs)
        return _RCLinear.apply(x, self.n, f, scale, shift)


class CastRule(Rule):
    """conv2d / linear / batch_norm in the pass's precision: parameters cast to the input's dtype."""

    def call(self, func, args, kwargs):
        x = call_arg(args, kwargs, 0, "input")

        def cast(v):
            if isinstance(v, torch.Tensor) and v.is_floating_point() and v.dtype != x.dtype:
                return v.to(x.dtype)
            return v

        return func(*[cast(a) for a in args], **{k: cast(v) for k, v in kwargs.items()})


class RCAddRule(Rule):
    """Additions of two path tensors are linear with no offset (D+ and D- add up); an
    added constant would need to stay out of D+/D-, which is not supported."""

    def call(self, func, args, kwargs):
        ts = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
        if len(ts) != 2 or not all(t.requires_grad for t in ts) or kwargs.get("alpha", 1) != 1:
            raise MethodError(
                "deeplift reveal_cancel: only additions of two feature maps (residual "
                "connections) are supported, not the addition of a constant"
            )
        return func(*args, **kwargs)


class RCReLURule(Rule):
    def __init__(self, n: int):
        self.n = n

    def call(self, func, args, kwargs):
        rect = parse_rectifier(func, args, kwargs)
        return finish_inplace(rect.x, _RCReLU.apply(rect.x, self.n), rect.inplace)
