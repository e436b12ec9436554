"""The explainer library: importable and testable with no Redis and no HTTP.

One verb, as in Captum::

    from workers.explain import attribute
    a = attribute(model, x, targets, "gradcam", {"layer": "features.10"})
    a.maps  # (N, 1, H, W) raw relevance at the model's input size
"""

from __future__ import annotations

from typing import Any

import torch

from schemas.methods import CATALOG, Params
from workers.errors import MethodError
from workers.explain.base import APPLICABILITY, IMPLEMENTATIONS, NO_PROGRESS, Attribution, Context, Progress
from workers.models.loading import LoadedModel

# importing the method modules registers them, in this order (the order of a model card's methods)
# isort: off
from workers.explain import gradients, fem  # noqa: F401
from workers.explain import linearization, structure, perturbation  # noqa: F401
# isort: on


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
) -> Attribution:
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
    ctx = Context(model=model, x=x.to(model.device), targets=targets.to(model.device), params=params, progress=progress)
    if spec.gradient_based and getattr(params, "smoothgrad", None) is not None:
        from workers.explain.smooth import apply_modifier  # SmoothGrad (§4.5) over any gradient method

        att = apply_modifier(ctx, method)
    else:
        att = IMPLEMENTATIONS[method](ctx)
    if att.maps.dim() != 4 or att.maps.shape[0] != x.shape[0] or tuple(att.maps.shape[-2:]) != tuple(x.shape[-2:]):
        raise RuntimeError(f"{method} returned maps of shape {tuple(att.maps.shape)} for input {tuple(x.shape)}")
    return att
