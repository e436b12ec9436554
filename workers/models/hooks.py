"""Forward hooks on a network's modules, in two shapes (see docs/architecture.md):

- :func:`forward_hooks`: hooks registered for the duration of a ``with`` block and removed
  on exit, whatever happens inside (the layer table, the structure family's analysis, the
  CAM head check).
- :class:`LayerCapture`: keep a module's output (the activation A of the CAM-type methods),
  optionally cutting the forward pass short once the module has been called enough times.

Both live here, beside :mod:`workers.models.loading`, because loading uses the first and the
explainer library (which imports loading) uses both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn

Hook = Callable[..., Any]


@contextmanager
def forward_hooks(
    post: Iterable[tuple[nn.Module, Hook]] = (), pre: Iterable[tuple[nn.Module, Hook]] = ()
) -> Iterator[None]:
    """Register forward hooks (``post``) and forward pre-hooks (``pre``), (module, hook) pairs,
    for the ``with`` block; every handle is removed on exit."""
    handles = []
    try:
        for module, hook in pre:
            handles.append(module.register_forward_pre_hook(hook))
        for module, hook in post:
            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()


class _StopForward(Exception):
    """Raised by a :class:`LayerCapture` to end the forward pass at its module."""


class LayerCapture:
    """Keeps the output of a module's last call while the ``with`` block runs.

    The kept tensor is the module's own output; the network continues on a clone, so a
    following in-place op (VGG's ReLU(inplace=True)) cannot overwrite it, and the gradient
    w.r.t. the kept tensor still flows through the clone. ``start_graph``: when gradients
    are enabled and the output does not require grad (frozen weights, an input without
    grad), the kept tensor becomes a leaf that requires grad (Grad-CAM needs no gradient
    below A). ``stop_after``: at the module's ``stop_after``-th call the output is kept and
    the forward pass ends there (the ``with`` block swallows the stop); ``calls`` counts the
    module's calls."""

    def __init__(self, module: nn.Module, *, start_graph: bool = True, stop_after: int | None = None):
        self.module = module
        self.start_graph = start_graph
        self.stop_after = stop_after
        self.output: torch.Tensor | None = None
        self.calls = 0
        self._handle: Any = None

    def _hook(self, mod: nn.Module, inp: Any, out: Any) -> Any:
        self.calls += 1
        if not isinstance(out, torch.Tensor):  # a module returning a tuple or dict: nothing to keep
            return None
        if self.stop_after is not None and self.calls >= self.stop_after:
            self.output = out
            raise _StopForward
        if self.start_graph and torch.is_grad_enabled() and not out.requires_grad:
            out = out.detach().requires_grad_(True)
        self.output = out
        return out.clone()

    def __enter__(self) -> LayerCapture:
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> bool:
        self._handle.remove()
        return exc_type is _StopForward

    def result(self, what: str = "the layer") -> torch.Tensor:
        """The kept output; RuntimeError when the forward pass never reached the module."""
        if self.output is None:
            raise RuntimeError(f"{what} was not reached in the forward pass")
        return self.output
