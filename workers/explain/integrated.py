"""Integrated gradients (§4.4, Eq. 7), chunked over (step, sample) pairs.

Everything happens on the model's normalised input: x' is the baseline in that
space and R = (x - x') * sum_k w_k dS_c/dx (x' + a_k (x - x')), a quadrature of
Eq. 7 with nodes a_k and weights w_k (:func:`quadrature`)."""

from __future__ import annotations

import math

import numpy as np
import torch

from schemas.methods.linearization import NAMED_BASELINES
from workers.explain.base import Attribution, Context, input_gradient, register, target_scores
from workers.explain.baselines import baseline, default_blur_sigma


def quadrature(steps: int, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """(alphas, weights) in float64 for ``steps`` on [0, 1]; the weights sum to 1.

    riemann_left/right/middle and gausslegendre use ``steps`` nodes;
    riemann_trapezoid uses ``steps`` intervals, i.e. steps + 1 nodes i/steps with
    weights 1/(2 steps), 1/steps, ..., 1/steps, 1/(2 steps) (the textbook rule)."""
    n = int(steps)
    if n < 1:
        raise ValueError("steps must be >= 1")
    i = np.arange(n, dtype=np.float64)
    if rule == "riemann_left":
        return i / n, np.full(n, 1.0 / n)
    if rule == "riemann_right":
        return (i + 1) / n, np.full(n, 1.0 / n)
    if rule == "riemann_middle":
        return (i + 0.5) / n, np.full(n, 1.0 / n)
    if rule == "riemann_trapezoid":
        a = np.arange(n + 1, dtype=np.float64) / n
        w = np.full(n + 1, 1.0 / n)
        w[0] = w[-1] = 0.5 / n
        return a, w
    if rule == "gausslegendre":
        x, w = np.polynomial.legendre.leggauss(n)
        return 0.5 * (1.0 + x), 0.5 * w
    raise ValueError(f"unknown integration rule {rule!r}")


def integrate(ctx: Context, x_base: torch.Tensor, steps: int, rule: str, batch: int) -> torch.Tensor:
    """(x - x') * sum_k w_k grad(x' + a_k (x - x')): at most ``batch`` images per pass,
    ctx.progress after each pass."""
    x, t = ctx.x, ctx.targets
    n = x.shape[0]
    alphas, weights = quadrature(steps, rule)
    a_t = torch.tensor(alphas, dtype=x.dtype, device=x.device)
    w_t = torch.tensor(weights, dtype=x.dtype, device=x.device)
    delta = x - x_base
    acc = torch.zeros_like(x)
    total = n * len(alphas)  # pairs (node k, sample i), node-major
    chunks = max(1, math.ceil(total / batch))
    for c in range(chunks):
        j = torch.arange(c * batch, min((c + 1) * batch, total), device=x.device)
        k, i = j // n, j % n
        xin = x_base[i] + a_t[k].view(-1, 1, 1, 1) * delta[i]
        grad, _ = input_gradient(ctx.net, xin, t[i])
        acc.index_add_(0, i, grad * w_t[k].view(-1, 1, 1, 1))
        ctx.progress((c + 1) / chunks)
    return delta * acc


@register("integrated_gradients")
def integrated_gradients(ctx: Context) -> Attribution:
    p = ctx.params
    x_base = baseline(
        ctx.model, ctx.x, p.baseline, blur_sigma=p.blur_sigma, seed=p.seed, max_image_pixels=ctx.max_image_pixels
    )
    name = p.baseline if p.baseline in NAMED_BASELINES else "image"
    batch = ctx.capped(p.internal_batch_size)  # the job's memory bound
    attr = integrate(ctx, x_base, p.steps, p.integration, batch)
    with torch.no_grad():
        n = ctx.x.shape[0]
        s = target_scores(ctx.net(torch.cat([ctx.x, x_base])), ctx.targets.repeat(2)).double()
        sx, sb = s[:n], s[n:]
    total = attr.double().flatten(1).sum(1)
    meta = []
    for i in range(n):
        diff = float(sx[i] - sb[i])
        err = float(total[i]) - diff
        meta.append(
            {
                "completeness_error": err,
                "relative_error": err / abs(diff) if diff != 0 else None,
                "score": float(sx[i]),
                "baseline_score": float(sb[i]),
            }
        )
    used = {
        "steps": p.steps,
        "baseline": name,
        "integration": p.integration,
        "internal_batch_size": batch,
        "seed": p.seed,
    }
    if p.baseline == "blur":
        used["blur_sigma"] = p.blur_sigma if p.blur_sigma is not None else default_blur_sigma(ctx.x)
    return Attribution(attr, used_params=used, meta=meta)
