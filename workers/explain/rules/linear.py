"""The linear calls (conv2d, linear, batch_norm) as the rules see them: the call's arguments bound
into ``f(a, w, b)``, the layer's own function with its stride/padding/... fixed, and the
transposed Jacobian ``J(w)^T`` of ``a -> f(a, w, None)`` (:func:`vjp`), shared by the LRP rules
(:mod:`workers.explain.rules.lrp`) and DeepLIFT's RevealCancel (:mod:`workers.explain.rules.deeplift`)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from workers.explain.engine import call_arg

# f(a, w, b) -> z : the layer's own function with its stride/padding/... bound
LayerFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def vjp(f: LayerFn, like: torch.Tensor, w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """J(w)^T s for the linear map a -> f(a, w, None), at an input shaped like ``like``
    (``f.transpose`` when the layer provides one: a transposed convolution / matmul)."""
    transpose = getattr(f, "transpose", None)
    if transpose is not None:
        return transpose(like, w, s)
    with torch.enable_grad():
        a = torch.zeros_like(like).requires_grad_(True)
        z = f(a, w, None)
        (g,) = torch.autograd.grad(z, a, s)
    return g


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
