"""SmoothGrad (§4.5, Eq. 8): the mean of a gradient method's map over noisy copies
of the input, as the ``smoothgrad`` method and as the modifier every gradient
method accepts (applied by :func:`workers.explain.attribute`).

sigma_i = noise_level * (max(x_i) - min(x_i)), per sample i over its whole
normalised C x H x W tensor. Sample i's noise comes from its own
``torch.Generator`` seeded with ``seed`` (drawn on the CPU, so the same on any
device), one (C, H, W) draw per noisy copy in order: the map of an image depends
neither on the other images of the batch nor on ``internal_batch_size``."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch

from schemas.methods import Params
from workers.explain.base import IMPLEMENTATIONS, Attribution, Context, Explainer, register

DEFAULT_SEED = 0
DEFAULT_BATCH = 16


def noise_sigma(x: torch.Tensor, noise_level: float) -> torch.Tensor:
    """(N,) sigma per sample."""
    flat = x.detach().flatten(1)
    return noise_level * (flat.max(dim=1).values - flat.min(dim=1).values)


def smooth(
    ctx: Context,
    fn: Explainer,
    params: Params,
    samples: int,
    noise_level: float,
    seed: int | None,
    batch: int = DEFAULT_BATCH,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """(mean map over ``samples`` noisy copies, the base method's used_params); ``batch`` is capped by
    the job's memory bound (``Context.capped``) by the caller."""
    x, t = ctx.x, ctx.targets
    n = x.shape[0]
    seed = DEFAULT_SEED if seed is None else int(seed)
    sigma = noise_sigma(x, noise_level)
    gens = [torch.Generator().manual_seed(seed) for _ in range(n)]
    total = samples * n  # pairs (copy s, sample i), copy-major: each generator draws in order
    chunks = max(1, math.ceil(total / batch))
    acc: torch.Tensor | None = None
    used: dict[str, Any] = {}
    for c in range(chunks):
        lo_j, hi_j = c * batch, min((c + 1) * batch, total)
        idx = [j % n for j in range(lo_j, hi_j)]
        noise = torch.stack([torch.randn(x.shape[1:], generator=gens[i], dtype=torch.float32) for i in idx])
        i_t = torch.tensor(idx, device=x.device)
        xin = x[i_t] + sigma[i_t].view(-1, 1, 1, 1) * noise.to(device=x.device, dtype=x.dtype)
        sub = replace(ctx, x=xin, targets=t[i_t], params=params, progress=ctx.progress.sub(lo_j / total, hi_j / total))
        att = fn(sub)
        used = att.used_params
        m = att.maps.detach()
        if acc is None:
            acc = torch.zeros((n,) + tuple(m.shape[1:]), dtype=m.dtype, device=m.device)
        acc.index_add_(0, i_t.to(m.device), m)
        ctx.progress(hi_j / total)
    return acc / samples, used


def smooth_meta(x: torch.Tensor, noise_level: float, samples: int) -> list[dict[str, Any]]:
    return [{"samples": samples, "noise_sigma": float(s)} for s in noise_sigma(x, noise_level)]


def apply_modifier(ctx: Context, method: str) -> Attribution:
    """The ``smoothgrad`` modifier object of a gradient method's params (seed null: 0)."""
    sg = ctx.params.smoothgrad
    batch = ctx.capped(DEFAULT_BATCH)
    maps, used = smooth(ctx, IMPLEMENTATIONS[method], ctx.params, sg.samples, sg.noise_level, sg.seed, batch)
    seed = DEFAULT_SEED if sg.seed is None else sg.seed
    used = {**used, "smoothgrad": {"samples": sg.samples, "noise_level": sg.noise_level, "seed": seed}}
    return Attribution(maps, used_params=used, meta=smooth_meta(ctx.x, sg.noise_level, sg.samples))


@register("smoothgrad")
def smoothgrad(ctx: Context) -> Attribution:
    p = ctx.params
    base_params = p.base_model()
    batch = ctx.capped(p.internal_batch_size)  # the job's memory bound
    maps, used = smooth(ctx, IMPLEMENTATIONS[p.base], base_params, p.samples, p.noise_level, p.seed, batch)
    base_used = {k: v for k, v in base_params.model_dump().items() if k != "smoothgrad"}
    base_used.update(used)
    return Attribution(
        maps,
        used_params={
            "samples": p.samples,
            "noise_level": p.noise_level,
            "base": p.base,
            "base_params": base_used,
            "seed": p.seed,
            "internal_batch_size": batch,
        },
        meta=smooth_meta(ctx.x, p.noise_level, p.samples),
    )
