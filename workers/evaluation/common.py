"""Shared pieces of the model-based metrics: the evaluation map of a method, pixel-scale
conversions and chunked forward passes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from schemas.methods import Params, default_reduce
from workers.explain import attribute
from workers.explain.base import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MEMORY_BYTES, NO_PROGRESS, Progress
from workers.explain.postprocess import reduce_channels
from workers.models.loading import LoadedModel

# (model, x, targets) -> (N, H, W) float tensor: one method's evaluation maps
MapFn = Callable[[LoadedModel, torch.Tensor, torch.Tensor], torch.Tensor]


def reduce_map(method: str, maps: torch.Tensor, params: Params | dict[str, Any] | None = None) -> torch.Tensor:
    """(N, C, H, W) raw relevance -> (N, H, W) with the method's default reduction
    (``schemas.methods.default_reduce``, as the service: SmoothGrad reduces like its base),
    the same map the service renders before normalisation."""
    how = default_reduce(method, params)
    if how == "none":
        how = "max_abs"
    return reduce_channels(maps.detach().float(), how)[:, 0]


def map_fn(
    method: str,
    params: dict[str, Any] | None = None,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
) -> MapFn:
    """A function computing ``method``'s evaluation maps on any (model, x, targets)."""

    def fn(model: LoadedModel, x: torch.Tensor, targets: torch.Tensor, progress: Progress = NO_PROGRESS):
        att = attribute(
            model,
            x,
            targets,
            method,
            params,
            progress=progress,
            max_image_pixels=max_image_pixels,
            memory_bytes=memory_bytes,
        )
        return reduce_map(method, att.maps, params)

    return fn


def batched_maps(
    fn: MapFn,
    model: LoadedModel,
    x: torch.Tensor,
    targets: torch.Tensor,
    chunk: int = 16,
    progress: Progress = NO_PROGRESS,
) -> torch.Tensor:
    """``fn`` over ``x`` in chunks of ``chunk`` samples (bounded memory for many perturbed copies)."""
    out = []
    for s in range(0, x.shape[0], chunk):
        progress(s / x.shape[0])
        out.append(fn(model, x[s : s + chunk], targets[s : s + chunk]))
    progress(1.0)
    return torch.cat(out)


def pixel_scale(model: LoadedModel) -> torch.Tensor:
    """1 / std per channel (1, C, 1, 1): a pixel-scale distance in the normalised input."""
    return 1.0 / model.mean_std()[1]


def clamp_input(model: LoadedModel, x: torch.Tensor) -> torch.Tensor:
    lo, hi = model.input_bounds()
    return torch.max(torch.min(x, hi), lo)


@torch.no_grad()
def scores(
    model: LoadedModel, x: torch.Tensor, targets: torch.Tensor, kind: str = "logit", batch_size: int = 64
) -> torch.Tensor:
    """The target's logit or softmax probability for every row of ``x`` (chunked forwards)."""
    out = []
    for s in range(0, x.shape[0], batch_size):
        logits = model.module(x[s : s + batch_size].to(model.device)).float()
        if kind == "probability":
            logits = torch.softmax(logits, dim=1)
        out.append(logits.gather(1, targets[s : s + batch_size].view(-1, 1).to(model.device))[:, 0])
    return torch.cat(out).cpu()


@torch.no_grad()
def predict(model: LoadedModel, x: torch.Tensor) -> torch.Tensor:
    return model.module(x.to(model.device)).argmax(1).cpu()


def with_module(model: LoadedModel, module: torch.nn.Module) -> LoadedModel:
    """The same registry model with another module (a randomised copy): layers and labels kept."""
    return replace(model, module=module)


def to_numpy(a: torch.Tensor) -> np.ndarray:
    return a.detach().cpu().double().numpy()
