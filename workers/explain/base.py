"""The explainer interface: every method is a function ``fn(ctx) -> Attribution``
registered under its public name (the names of ``schemas.methods.CATALOG``).

``ctx.x`` is the normalised batch (N, C, H, W) on the model's device and
``ctx.targets`` the class index per sample; the method returns its raw
relevance at the model's input resolution. Reduction over channels, resizing
to the client's image, normalisation and rendering are shared
(``workers.explain.postprocess``, ``workers.serving.render``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from schemas.methods import CATALOG, Params
from schemas.settings import Settings
from workers.errors import Cancelled
from workers.models.loading import LoadedModel


class Progress:
    """Reports a fraction in [0, 1] and raises :class:`Cancelled` when the job was cancelled.

    Long methods call it between chunks; ``sub(a, b)`` maps a method's own [0, 1]
    onto [a, b] of the job's progress."""

    def __init__(
        self,
        report: Callable[[float], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
        lo: float = 0.0,
        hi: float = 1.0,
    ):
        self._report = report
        self._cancelled = cancelled
        self.lo, self.hi = lo, hi

    def __call__(self, fraction: float) -> None:
        if self._cancelled is not None and self._cancelled():
            raise Cancelled("the job was cancelled")
        if self._report is not None:
            self._report(self.lo + (self.hi - self.lo) * min(max(fraction, 0.0), 1.0))

    def sub(self, a: float, b: float) -> Progress:
        span = self.hi - self.lo
        return Progress(self._report, self._cancelled, self.lo + span * a, self.lo + span * b)


NO_PROGRESS = Progress()


# the largest image a method may decode (an image baseline) unless attribute() is told otherwise
DEFAULT_MAX_IMAGE_PIXELS: int = Settings.model_fields["max_image_pixels"].default
# the memory bound of one job unless attribute() is told otherwise: internal batches are capped to fit
DEFAULT_MEMORY_BYTES: int = Settings.model_fields["job_memory_bytes"].default


def sample_bytes(model: LoadedModel, x: torch.Tensor) -> int:
    """Activations of one sample's forward at the model's input size: the input and every feature map
    of the model's layer table (measured by one forward at load time, ``workers.models.loading``)."""
    elements = int(x[0].numel()) + sum(math.prod(li.shape) for li in model.layers.values())
    return elements * x.element_size()


@dataclass
class Context:
    model: LoadedModel
    x: torch.Tensor  # (N, C, H, W) normalised input
    targets: torch.Tensor  # (N,) long
    params: Params
    progress: Progress = NO_PROGRESS
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS  # the worker's limit, for images inside params
    memory_bytes: int = DEFAULT_MEMORY_BYTES  # the job's memory bound: caps the samples of one pass

    def chunk_cap(self, backward: bool = True) -> int:
        """The most samples one pass may take within ``memory_bytes``; a backward keeps the forward's
        activations and as many gradients (twice a forward's)."""
        per = sample_bytes(self.model, self.x) * (2 if backward else 1)
        return max(1, self.memory_bytes // max(per, 1))

    def capped(self, batch: int, backward: bool = True) -> int:
        """``batch`` (a method's internal batch) capped by :meth:`chunk_cap`."""
        return max(1, min(batch, self.chunk_cap(backward)))

    @property
    def net(self) -> torch.nn.Module:
        return self.model.module


@dataclass
class Attribution:
    maps: torch.Tensor  # (N, C', H, W) at the model's input size; C' = C or 1
    used_params: dict[str, Any] = field(default_factory=dict)  # resolved defaults (e.g. the layer)
    meta: list[dict[str, Any]] = field(default_factory=list)  # per sample (e.g. IG completeness error)


Explainer = Callable[[Context], Attribution]
LayerOf = Callable[[LoadedModel, Params], str]


@dataclass(frozen=True)
class Fusion:
    """How a method runs inside the fused pass (:mod:`workers.explain.fused`: one forward for
    several methods, one backward per distinct backward rule over the kept graph).

    ``input_grads``: the backward rules whose gradient w.r.t. the input the map needs, "plain"
    (autograd's own), "guided" or "deconv" (:mod:`workers.explain.rules.relu`). ``layer``
    resolves the method's layer from (model, params) (None: no layer; its output is captured).
    ``layer_grad``: the map needs the plain gradient w.r.t. that layer's output (Grad-CAM).
    ``compute(fused_pass, call)`` returns the map (N, C', H, W) from what the pass kept:
    ``input_grad(rule)``, ``gradcam(layer)``, ``activation(layer)``, ``targets``, ``size``."""

    compute: Callable[[Any, Any], torch.Tensor]
    input_grads: tuple[str, ...] = ()
    layer: LayerOf | None = None
    layer_grad: bool = False


IMPLEMENTATIONS: dict[str, Explainer] = {}
# model -> reason it cannot run; None when applicable. Methods that need a check register one.
APPLICABILITY: dict[str, Callable[[LoadedModel], str | None]] = {}
# the methods the fused pass can serve, and how
FUSIONS: dict[str, Fusion] = {}


def register(
    name: str, applicable: Callable[[LoadedModel], str | None] | None = None, fuse: Fusion | None = None
) -> Callable[[Explainer], Explainer]:
    """Register ``fn(ctx) -> Attribution`` as method ``name`` (declared first in
    ``schemas.methods``), with its applicability check and how it fuses, if it does."""
    if name not in CATALOG:
        raise KeyError(f"{name!r} is not in schemas.methods.CATALOG; declare it there first")

    def deco(fn: Explainer) -> Explainer:
        if name in IMPLEMENTATIONS:
            raise ValueError(f"{name!r} implemented twice")
        IMPLEMENTATIONS[name] = fn
        if applicable is not None:
            APPLICABILITY[name] = applicable
        if fuse is not None:
            FUSIONS[name] = fuse
        return fn

    return deco


def named_layer(method: str) -> LayerOf:
    """The layer of a method whose ``layer`` param names a module (default: the model's)."""
    return lambda model, params: model.resolve_layer(params.layer, method)


def target_scores(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """S_c per sample: the pre-softmax score of each sample's target class."""
    return logits.gather(1, targets.view(-1, 1)).squeeze(1)


def input_gradient(net: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dS_c/dx, logits) for a batch: one forward and one plain backward."""
    with torch.enable_grad():
        xi = x.detach().requires_grad_(True)
        logits = net(xi)
        (grad,) = torch.autograd.grad(target_scores(logits, targets).sum(), xi)
    return grad, logits.detach()
