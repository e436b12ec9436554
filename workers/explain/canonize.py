"""What the structure family needs to know about a model before explaining it,
computed once per model (one dummy forward pass, cached per module object,
never per request):

- **BatchNorm folding** (canonization): every BatchNorm whose input is the output
  of a conv/linear module is folded into that layer,
  ``w' = w * g / sqrt(var + eps)``, ``b' = (b - mean) * g / sqrt(var + eps) + beta``.
  Nothing is copied: the fold table maps the layer's weight tensor to (w', b'),
  and during an LRP pass the conv call computes with (w', b') while the BN call
  that follows returns its input unchanged (vgg16_bn, ResNets).
- **Coverage**: which torch functions the relevance passes through. A function
  that no rule covers (SiLU, Hardswish, GELU, LayerNorm, softmax, attention's
  matmul...) makes the method inapplicable, with the first such layer named.

The function kinds the structure family adds to the engine are registered here
(``engine.register_kind``).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from workers.errors import MethodError
from workers.explain.engine import FUNCTION_KINDS, RuleMode, call_arg, register_kind
from workers.models.hooks import forward_hooks
from workers.models.loading import LoadedModel

T = torch.Tensor

register_kind("conv2d", {torch.conv2d: False, F.conv2d: False})
register_kind("linear", {F.linear: False})
register_kind(
    "add", {torch.add: False, T.add: False, T.__add__: False, T.__radd__: False, T.add_: True, T.__iadd__: True}
)
register_kind("max_pool2d", {F.max_pool2d: False})
register_kind("avg_pool2d", {F.avg_pool2d: False})
register_kind("adaptive_avg_pool2d", {F.adaptive_avg_pool2d: False})
register_kind("batch_norm", {F.batch_norm: False})
register_kind("mean", {torch.mean: False, T.mean: False})
register_kind("sum", {torch.sum: False, T.sum: False})

# Functions that only move values around (or are the identity in eval mode): their
# gradient routes relevance / multipliers unchanged, sample by sample.
ROUTING: frozenset[Callable] = frozenset(
    {
        torch.flatten,
        T.flatten,
        T.view,
        T.view_as,
        T.reshape,
        T.reshape_as,
        torch.reshape,
        T.permute,
        torch.permute,
        T.transpose,
        torch.transpose,
        T.contiguous,
        T.squeeze,
        torch.squeeze,
        T.unsqueeze,
        torch.unsqueeze,
        torch.cat,
        torch.concat,
        T.__getitem__,
        T.split,
        torch.split,
        T.chunk,
        torch.chunk,
        T.narrow,
        T.clone,
        T.to,
        T.float,
        F.dropout,
        F.dropout1d,
        F.dropout2d,
        F.dropout3d,
        F.alpha_dropout,
        F.feature_alpha_dropout,
    }
)
_REDUCTIONS = {torch.sum, T.sum, torch.mean, T.mean}
_DROPOUTS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout}


def kind_functions(*kinds: str) -> set[Callable]:
    out: set[Callable] = set()
    for k in kinds:
        out.update(FUNCTION_KINDS[k])
    return out


# What each method family can pass relevance through (rules + routing).
LRP_KINDS = (
    "relu",
    "conv2d",
    "linear",
    "add",
    "max_pool2d",
    "avg_pool2d",
    "adaptive_avg_pool2d",
    "batch_norm",
    "mean",
    "sum",
)
DEEPLIFT_KINDS = LRP_KINDS
COVERED: dict[str, frozenset[Callable]] = {
    "lrp": frozenset(kind_functions(*LRP_KINDS) | ROUTING),
    "deeplift": frozenset(kind_functions(*DEEPLIFT_KINDS) | ROUTING),
}


def func_name(func: Callable) -> str:
    name = getattr(func, "__name__", None) or repr(func)
    if name == "fn" and func is F.max_pool2d:
        name = "max_pool2d"
    return name


def _any_grad(out) -> bool:
    if isinstance(out, torch.Tensor):
        return out.requires_grad
    if isinstance(out, (tuple, list)):
        return any(_any_grad(o) for o in out)
    return False


def call_problem(func: Callable, args: tuple, kwargs: dict) -> str | None:
    """Calls of covered functions that still cannot be explained (batch statistics, active dropout)."""
    if func in _DROPOUTS and call_arg(args, kwargs, 2, "training", True) and call_arg(args, kwargs, 1, "p", 0.5) > 0:
        return "dropout in training mode"
    if func is F.batch_norm:
        if call_arg(args, kwargs, 5, "training", False) or call_arg(args, kwargs, 1, "running_mean") is None:
            return "batch normalisation with batch statistics (training mode or no running statistics)"
    if func is F.max_pool2d and call_arg(args, kwargs, 6, "return_indices", False):
        return "max-pooling that returns indices"
    if func in _REDUCTIONS:
        x, dim = call_arg(args, kwargs, 0, "input"), call_arg(args, kwargs, 1, "dim")
        dims = dim if isinstance(dim, (tuple, list)) else (dim,)
        if dim is None or any(d is None or (d % max(x.dim(), 1)) == 0 for d in dims):
            return f"{func_name(func)} over the batch dimension"
    return None


class CheckedRuleMode(RuleMode):
    """RuleMode that refuses, at run time, any function on the relevance path that
    neither has a rule nor is covered (``covered``): a wrong map is never returned."""

    def __init__(self, rules: dict, covered: frozenset[Callable], method: str):
        super().__init__(rules)
        self.covered = covered
        self.method = method

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.covered:
            problem = call_problem(func, args, kwargs)
            if problem:
                raise MethodError(f"{self.method}: {problem} has no relevance rule")
        if func in self._dispatch:
            return super().__torch_function__(func, types, args, kwargs)
        try:
            out = func(*args, **kwargs)
        except Exception:  # an uncovered op may also fail on the pass's batch layout or dtype
            if func not in self.covered and (_any_grad(args) or _any_grad(list(kwargs.values()))):
                raise MethodError(
                    f"{self.method} has no rule for {func_name(func)!r} met in the forward pass"
                ) from None
            raise
        if func not in self.covered and _any_grad(out):
            raise MethodError(f"{self.method} has no rule for {func_name(func)!r} met in the forward pass")
        return out


# ---- the one-off analysis --------------------------------------------------------------------------


@dataclass
class Fold:
    weight: torch.Tensor  # folded weight of the conv / linear layer
    bias: torch.Tensor
    bn_key: int  # id of the BatchNorm's running_mean


@dataclass
class Analysis:
    folds: dict[int, Fold] = field(default_factory=dict)  # id(layer weight) -> folded params
    folded_bn: dict[int, int] = field(default_factory=dict)  # id(bn running_mean) -> id(layer weight)
    fold_names: list[tuple[str, str]] = field(default_factory=list)  # (layer, bn) module names
    unsupported: dict[str, str | None] = field(default_factory=dict)  # family -> reason or None
    _keep: list = field(default_factory=list, repr=False)  # keeps the keyed tensors alive


def fold_bn(w: torch.Tensor, b: torch.Tensor | None, bn: nn.modules.batchnorm._BatchNorm):
    scale = (bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)) / torch.sqrt(
        bn.running_var + bn.eps
    )
    shift = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
    b0 = b if b is not None else torch.zeros_like(bn.running_mean)
    wf = w * scale.view(-1, *([1] * (w.dim() - 1)))
    bf = (b0 - bn.running_mean) * scale + shift
    return wf.detach().clone(), bf.detach().clone()


class _Trace(TorchFunctionMode):
    def __init__(self, stack: list[tuple[str, str]]):
        super().__init__()
        self.stack = stack
        self.first: dict[str, str] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if _any_grad(out) or func in _DROPOUTS:
            where = self.stack[-1] if self.stack else ("(model)", "forward")
            for family, covered in COVERED.items():
                if family in self.first:
                    continue
                if func not in covered:
                    if _any_grad(out):
                        self.first[family] = (
                            f"layer {where[0]!r} ({where[1]}) calls {func_name(func)!r}, which no {family} rule covers"
                        )
                else:
                    problem = call_problem(func, args, kwargs)
                    if problem:
                        self.first[family] = f"layer {where[0]!r} ({where[1]}): {problem}"
        return out


def analyse(net: nn.Module, input_shape: tuple[int, ...]) -> Analysis:
    """One dummy forward (batch 1) with module hooks: BN folds and the first uncovered op."""
    stack: list[tuple[str, str]] = []
    layer_out: dict[int, tuple[torch.Tensor, str, nn.Module]] = {}
    pairs: list[tuple[str, nn.Module, str, nn.Module]] = []

    def pre_hook(label: str):
        def pre(m, inp):
            stack.append((label, type(m).__name__))
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and inp and isinstance(inp[0], torch.Tensor):
                hit = layer_out.get(id(inp[0]))
                if hit is not None and hit[0] is inp[0] and m.track_running_stats and m.running_mean is not None:
                    pairs.append((hit[1], hit[2], label, m))

        return pre

    def post_hook(label: str):
        def post(m, inp, out):
            if stack:
                stack.pop()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and isinstance(out, torch.Tensor):
                layer_out[id(out)] = (out, label, m)

        return post

    modules = [(mod, name or "(model)") for name, mod in net.named_modules()]
    param = next(net.parameters(), None)
    dev = param.device if param is not None else torch.device("cpu")
    x = torch.zeros((1, *input_shape), device=dev, requires_grad=True)
    trace = _Trace(stack)
    pre = [(mod, pre_hook(label)) for mod, label in modules]
    post = [(mod, post_hook(label)) for mod, label in modules]
    with forward_hooks(post, pre), torch.enable_grad(), trace:
        net(x)
    res = Analysis()
    for family in COVERED:
        res.unsupported[family] = trace.first.get(family)
    seen_layers: set[int] = set()
    for lname, layer, bname, bn in pairs:
        if id(layer) in seen_layers:  # a layer reused with two BNs cannot be folded once
            continue
        seen_layers.add(id(layer))
        wf, bf = fold_bn(layer.weight, layer.bias, bn)
        res.folds[id(layer.weight)] = Fold(wf, bf, id(bn.running_mean))
        res.folded_bn[id(bn.running_mean)] = id(layer.weight)
        res.fold_names.append((lname, bname))
        res._keep += [layer.weight, bn.running_mean]
    return res


_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple, Analysis]] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def analysis_of(net: nn.Module, input_shape: tuple[int, ...]) -> Analysis:
    """The cached analysis of a model (computed on first use)."""
    key = tuple(input_shape)
    with _LOCK:
        per = _CACHE.get(net)
        if per is not None and key in per:
            return per[key]
    res = analyse(net, key)
    with _LOCK:
        _CACHE.setdefault(net, {})[key] = res
    return res


def model_analysis(model: LoadedModel) -> Analysis:
    """Analysis of a ``LoadedModel`` at its registry input size."""
    return analysis_of(model.module, (model.channels, *model.input_size))


def family_check(family: str) -> Callable[[LoadedModel], str | None]:
    """The applicability check of a structure-family method: the first operation no rule of
    ``family`` covers, or None."""

    def applicable(model: LoadedModel) -> str | None:
        try:
            return model_analysis(model).unsupported[family]
        except MethodError as e:
            return e.detail
        except Exception as e:  # a model the dummy pass cannot run: refuse rather than guess
            return f"the model could not be analysed ({type(e).__name__}: {e})"

    return applicable


__all__ = ["Analysis", "CheckedRuleMode", "COVERED", "ROUTING", "analysis_of", "family_check", "model_analysis"]
