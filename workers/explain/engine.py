"""The one hook engine: a forward pass under a ``TorchFunctionMode`` that hands
every *call* of chosen torch functions to a rule.

Why function calls and not modules: torchvision's ResNet blocks call one
``self.relu`` module twice, DenseNet calls ``F.relu`` in ``forward``, and VGG's
ReLUs are in-place. A rule attached to a module sees some of those calls,
or sees them mixed up; intercepting the function sees each call exactly once,
in order, whatever module (or none) made it.

A rule is a small object (as in Zennit's rules) that replaces one function's
forward/backward, usually through a ``torch.autograd.Function``::

    with RuleMode({"relu": GuidedReLU()}):
        logits = net(x)          # every ReLU call now uses the guided backward

Kinds group the spellings of one operation (``F.relu``, ``torch.relu``,
``Tensor.relu``, in-place variants...). The rules themselves live in
:mod:`workers.explain.rules` (see docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

# kind -> {function: is_inplace}
FUNCTION_KINDS: dict[str, dict[Callable, bool]] = {
    "relu": {
        F.relu: False,
        torch.relu: False,
        torch.Tensor.relu: False,
        torch.relu_: True,
        F.relu_: True,
        torch.Tensor.relu_: True,
    },
}


def register_kind(kind: str, functions: dict[Callable, bool]) -> None:
    """Add spellings of an operation to the engine (family modules extend it for their rules)."""
    FUNCTION_KINDS.setdefault(kind, {}).update(functions)


class Rule:
    """Replaces one call. ``call(func, args, kwargs)`` must return what ``func`` would."""

    def call(self, func: Callable, args: tuple, kwargs: dict) -> Any:  # pragma: no cover - interface
        raise NotImplementedError


def call_arg(args: tuple, kwargs: dict, pos: int, name: str, default: Any = None) -> Any:
    """Argument ``name`` of an intercepted call, passed at position ``pos`` or by keyword (the
    one parser of call arguments: rules and the structure family's checks read calls with it)."""
    if len(args) > pos:
        return args[pos]
    return kwargs.get(name, default)


def finish_inplace(x: torch.Tensor, out: torch.Tensor, inplace: bool) -> torch.Tensor:
    """Honour in-place semantics: write the rule's output into ``x`` so callers that
    keep using ``x`` see the rectified values; the gradient flows through the copy."""
    if inplace:
        x.copy_(out)
        return x
    return out


class RuleMode(TorchFunctionMode):
    """Apply ``rules`` (kind -> Rule) to every matching function call inside the ``with`` block."""

    def __init__(self, rules: dict[str, Rule]):
        super().__init__()
        self._dispatch: dict[Callable, Rule] = {}
        for kind, rule in rules.items():
            if kind not in FUNCTION_KINDS:
                raise KeyError(f"no function kind {kind!r}; known: {sorted(FUNCTION_KINDS)}")
            for fn in FUNCTION_KINDS[kind]:
                self._dispatch[fn] = rule

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        rule = self._dispatch.get(func)
        if rule is None:
            return func(*args, **kwargs)
        return rule.call(func, args, kwargs)
