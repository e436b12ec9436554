"""DeepLIFT (§5.2, Eqs. 19-25; Shrikumar et al. 2017) through the per-call engine.

The input ``x`` and its reference ``x0`` run as ONE batch through the network
under a :class:`~workers.explain.canonize.CheckedRuleMode`, so every call of a
non-linearity sees its input for ``x`` and for ``x0`` side by side (whichever
module, reused or functional, made the call). Backward passes carry multipliers
(Eq. 20-21: the chain rule for multipliers is the chain rule of autograd).

Rescale (batch ``[x; x0]``, 2N samples)
    Linear rule (Eq. "m = w") at conv / linear / batch-norm / additions / average
    pooling: their plain gradient. Rescale at every ReLU call:
    ``m = dz / dy`` (the ReLU derivative where dy = 0). Max-pooling: the whole
    difference dz of a window goes to the position that holds the larger of the two
    maxima (the arg-max of x if max(x) >= max(x0), else the arg-max of x0), i.e.
    ``m_i = dz / dy_i`` there, 0 elsewhere, accumulated over overlapping windows
    (Captum's rule for non-overlapping windows; Captum's unpooling overwrites
    instead of adding where windows overlap, which breaks Eq. 19 on AlexNet).

RevealCancel (batch ``[x; x0; D+; D-]``, 4N samples)
    Each tensor on the path carries, next to its values for x and x0, the sums of
    the positive and negative contributions to its difference, D+ >= 0 >= D-,
    D+ + D- = dy (Eq. 22). Linear ops propagate them with the positive and negative
    parts of their weights (a contribution w_ij D_i is positive when w_ij and D_i
    have the same sign); at a ReLU, Eqs. 23-24 give dz+ and dz- from y0 = the
    reference input, dy+ = D+, dy- = D-, and Eq. 25 the two multipliers
    m+ = dz+/dy+, m- = dz-/dy-. The backward pass carries the multipliers of the
    positive and negative groups in the D+ and D- slots of the gradient; the output
    of a ReLU or max-pool is one contribution per neuron (its dz, by sign).

Both rules satisfy summation-to-delta (Eq. 19) exactly up to float rounding:
``sum_i (x_i - x0_i) m_i = S_c(x) - S_c(x0)``; the error is reported per sample.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from workers.errors import MethodError
from workers.explain.canonize import COVERED, CheckedRuleMode
from workers.explain.engine import Rule, call_arg, finish_inplace
from workers.explain.lrp_rules import vjp
from workers.explain.relu_rules import parse_rectifier

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
        ctx.save = (z[:n], z[n:], idx[:n], idx[n:], (y[:n] - y[n:]).detach())
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

    def call(self, func, args, kwargs, index):
        rect = parse_rectifier(func, args, kwargs)
        return finish_inplace(rect.x, _RescaleReLU.apply(rect.x, self.n), rect.inplace)


class RescaleMaxPoolRule(Rule):
    def __init__(self, n: int, reveal_cancel: bool = False):
        self.n = n
        self.rc = reveal_cancel

    def call(self, func, args, kwargs, index):
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


CONV_ARGS = (
    ("input", None),
    ("weight", None),
    ("bias", None),
    ("stride", 1),
    ("padding", 0),
    ("dilation", 1),
    ("groups", 1),
)
LINEAR_ARGS = (("input", None), ("weight", None), ("bias", None))


def bind_linear(func, args: tuple, kwargs: dict, spec) -> tuple:
    """(input, weight, bias, f) of a conv2d / linear call; f(a, w, b) repeats the call's other arguments."""
    vals = [d for _, d in spec]
    names = [k for k, _ in spec]
    for i, a in enumerate(args):
        vals[i] = a
    for k, v in kwargs.items():
        vals[names.index(k)] = v
    rest = vals[3:]

    def f(a, w, b):
        return func(a, w, b, *rest)

    if spec is LINEAR_ARGS:
        f.transpose = lambda like, w, s: (s @ w).reshape(like.shape)
    elif func is torch.conv2d and not isinstance(rest[1], str):  # padding 'same' / 'valid': autograd
        stride, padding, dilation, groups = rest
        f.transpose = lambda like, w, s: torch.nn.grad.conv2d_input(like.shape, w, s, stride, padding, dilation, groups)
    return vals[0], vals[1], vals[2], f


def bind_batch_norm(args: tuple, kwargs: dict) -> tuple:
    """(input, scale, shift, f) of an eval-mode batch_norm call: y = scale * x + shift per channel."""
    x = call_arg(args, kwargs, 0, "input")
    mean, var = call_arg(args, kwargs, 1, "running_mean"), call_arg(args, kwargs, 2, "running_var")
    weight, bias = call_arg(args, kwargs, 3, "weight"), call_arg(args, kwargs, 4, "bias")
    eps = call_arg(args, kwargs, 7, "eps", 1e-5)
    scale = (weight if weight is not None else torch.ones_like(var)) / torch.sqrt(var + eps)
    shift = (bias if bias is not None else torch.zeros_like(mean)) - mean * scale
    shape = (1, -1) + (1,) * (x.dim() - 2)

    def f(a, w, b):
        out = a * w.view(shape)
        return out if b is None else out + b.view(shape)

    return x, scale, shift, f


class RCLinearRule(Rule):
    def __init__(self, n: int, spec):
        self.n, self.spec = n, spec

    def call(self, func, args, kwargs, index):
        a, w, b, f = bind_linear(func, args, kwargs, self.spec)
        return _RCLinear.apply(a, self.n, f, w, b)


class RCBatchNormRule(Rule):
    def __init__(self, n: int):
        self.n = n

    def call(self, func, args, kwargs, index):
        x, scale, shift, f = bind_batch_norm(args, kwargs)
        return _RCLinear.apply(x, self.n, f, scale, shift)


class CastRule(Rule):
    """conv2d / linear / batch_norm in the pass's precision: parameters cast to the input's dtype."""

    def call(self, func, args, kwargs, index):
        x = call_arg(args, kwargs, 0, "input")

        def cast(v):
            if isinstance(v, torch.Tensor) and v.is_floating_point() and v.dtype != x.dtype:
                return v.to(x.dtype)
            return v

        return func(*[cast(a) for a in args], **{k: cast(v) for k, v in kwargs.items()})


class RCAddRule(Rule):
    """Additions of two path tensors are linear with no offset (D+ and D- add up); an
    added constant would need to stay out of D+/D-, which is not supported."""

    def call(self, func, args, kwargs, index):
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

    def call(self, func, args, kwargs, index):
        rect = parse_rectifier(func, args, kwargs)
        return finish_inplace(rect.x, _RCReLU.apply(rect.x, self.n), rect.inplace)


# ---- driver ----------------------------------------------------------------------------------------


def deeplift(
    net: torch.nn.Module,
    x: torch.Tensor,
    x0: torch.Tensor,
    targets: torch.Tensor,
    rule: str = "rescale",
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, list[dict]]:
    """DeepLIFT attributions (N, C, H, W) of ``S_c(x) - S_c(x0)`` and per-sample summation-to-delta.

    The pass runs in ``dtype`` (default float64, float32 on MPS): the multipliers are ratios of
    differences and RevealCancel sums positive and negative partial contributions that are often
    ~100 times larger than the output difference; in float32 the rounding alone can break Eq. 19 by
    ~1e-4 relative. Parameters are cast per call; the model is not touched. The map comes back in
    the input's dtype."""
    n = x.shape[0]
    out_dtype = x.dtype
    if dtype is None:
        dtype = torch.float32 if x.device.type == "mps" else torch.float64
    x, x0 = x.detach().to(dtype), x0.detach().to(device=x.device, dtype=dtype)
    dx = x - x0
    t = targets.view(-1, 1)
    cast = CastRule()
    with torch.enable_grad():
        if rule == "rescale":
            xx = torch.cat([x, x0]).requires_grad_(True)
            rules = {
                "relu": RescaleReLURule(n),
                "max_pool2d": RescaleMaxPoolRule(n),
                "conv2d": cast,
                "linear": cast,
                "batch_norm": cast,
            }
            with CheckedRuleMode(rules, COVERED["deeplift"], "deeplift"):
                out = net(xx)
            seed = torch.zeros_like(out)
            seed[:n].scatter_(1, t, 1.0)
            (g,) = torch.autograd.grad(out, xx, seed)
            attr = g[:n] * dx
        elif rule == "reveal_cancel":
            xx = torch.cat([x, x0, dx.clamp(min=0), dx.clamp(max=0)]).requires_grad_(True)
            rules = {
                "relu": RCReLURule(n),
                "max_pool2d": RescaleMaxPoolRule(n, reveal_cancel=True),
                "conv2d": RCLinearRule(n, CONV_ARGS),
                "linear": RCLinearRule(n, LINEAR_ARGS),
                "batch_norm": RCBatchNormRule(n),
                "add": RCAddRule(),
            }
            with CheckedRuleMode(rules, COVERED["deeplift"], "deeplift"):
                out = net(xx)
            seed = torch.zeros_like(out)
            seed[2 * n : 3 * n].scatter_(1, t, 1.0)
            seed[3 * n :].scatter_(1, t, 1.0)
            (g,) = torch.autograd.grad(out, xx, seed)
            attr = g[2 * n : 3 * n] * dx.clamp(min=0) + g[3 * n :] * dx.clamp(max=0)
        else:
            raise MethodError(f"unknown deeplift rule {rule!r}")
    out = out.detach()
    s, s0 = out[:n].gather(1, t).squeeze(1), out[n : 2 * n].gather(1, t).squeeze(1)
    delta = s - s0
    total = attr.flatten(1).sum(1)
    meta = []
    for i in range(n):
        d, a = float(delta[i]), float(total[i])
        meta.append(
            {
                "score": float(s[i]),
                "reference_score": float(s0[i]),
                "delta": d,
                "attribution_sum": a,
                "summation_to_delta_error": a - d,
                "summation_to_delta_relative_error": abs(a - d) / max(abs(d), 1e-12),
            }
        )
    return attr.detach().to(out_dtype), meta


# ---- references --------------------------------------------------------------------------------------


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur per channel (kernel radius ceil(3 sigma), replicate padding)."""
    r = max(1, int(math.ceil(3 * sigma)))
    k = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (k / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    y = F.pad(x, (r, r, 0, 0), mode="replicate")
    y = F.conv2d(y, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    y = F.pad(y, (0, 0, r, r), mode="replicate")
    return F.conv2d(y, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def reference_input(
    model, x: torch.Tensor, baseline: str, seed: int = 0, blur_sigma: float | None = None
) -> tuple[torch.Tensor, dict]:
    """The DeepLIFT reference x0 on the normalised scale, and the resolved parameters."""
    lo, hi = model.input_bounds()
    lo, hi = lo.to(x), hi.to(x)
    used: dict = {"baseline": baseline}
    if baseline == "black":
        x0 = lo.expand_as(x)
    elif baseline == "white":
        x0 = hi.expand_as(x)
    elif baseline == "uniform":
        gen = torch.Generator().manual_seed(int(seed))
        u = torch.rand((1, *x.shape[1:]), generator=gen).to(x)  # one draw, shared by the batch
        x0 = (lo + u * (hi - lo)).expand_as(x)
        used["seed"] = int(seed)
    elif baseline == "blur":
        sigma = float(blur_sigma) if blur_sigma is not None else min(x.shape[-2:]) / 10.0
        x0 = gaussian_blur(x, sigma)
        used["blur_sigma"] = sigma
    else:
        raise MethodError(f"unknown baseline {baseline!r}", field="baseline")
    return x0.contiguous(), used
