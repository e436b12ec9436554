"""The one verb of the library, ``attribute()``, and ``applicability()``: the registered
methods (``workers.explain.base.register``) looked up by their public name; re-exported by
:mod:`workers.explain`, which imports every method module (see docs/architecture.md)."""

from __future__ import annotations

from typing import Any

import torch

from schemas.methods import CATALOG, Params
from workers.errors import MethodError
from workers.explain.base import (
    APPLICABILITY,
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MEMORY_BYTES,
    IMPLEMENTATIONS,
    NO_PROGRESS,
    Attribution,
    Context,
    Progress,
)
from workers.explain.smooth import apply_modifier
from workers.models.loading import LoadedModel


def applicability(model: LoadedModel) -> dict[str, str | None]:
    """Per implemented method: None if it runs on this model, else the reason it cannot."""
    out = {}
    for name in IMPLEMENTATIONS:
        check = APPLICABILITY.get(name)
        out[name] = check(model) if check else None
    return out


def attribute(
    model: LoadedModel,
    x: torch.Tensor,
    targets: torch.Tensor | int,
    method: str,
    params: dict[str, Any] | Params | None = None,
    progress: Progress = NO_PROGRESS,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
) -> Attribution:
    """The attribution of ``method`` for the normalised batch ``x`` (N, C, H, W) and ``targets``
    (an index per sample, or one for all). ``params``: a dict validated against the method's params
    model, or a Params instance (not validated again). ``max_image_pixels``: the largest image a
    parameter may carry (integrated gradients' image baseline). ``memory_bytes``: the job's memory
    bound; internal batches are capped so one pass fits it (the capped value in ``used_params``).
    Raises MethodError when the method is unknown or cannot be applied to the model."""
    spec = CATALOG.get(method)
    if spec is None or method not in IMPLEMENTATIONS:
        raise MethodError(f"unknown method {method!r}")
    if not isinstance(params, Params):
        params = spec.params.model_validate(params or {})
    check = APPLICABILITY.get(method)
    reason = check(model) if check else None
    if reason:
        raise MethodError(f"{method} cannot be applied to model {model.name!r}: {reason}")
    if isinstance(targets, int):
        targets = torch.full((x.shape[0],), targets, dtype=torch.long, device=x.device)
    ctx = Context(
        model=model,
        x=x.to(model.device),
        targets=targets.to(model.device),
        params=params,
        progress=progress,
        max_image_pixels=max_image_pixels,
        memory_bytes=memory_bytes,
    )
    if spec.gradient_based and getattr(params, "smoothgrad", None) is not None:
        att = apply_modifier(ctx, method)  # SmoothGrad (§4.5) over any gradient method
    else:
        att = IMPLEMENTATIONS[method](ctx)
    if att.maps.dim() != 4 or att.maps.shape[0] != x.shape[0] or tuple(att.maps.shape[-2:]) != tuple(x.shape[-2:]):
        raise RuntimeError(f"{method} returned maps of shape {tuple(att.maps.shape)} for input {tuple(x.shape)}")
    return att
