"""§2.1: meaningful perturbation (Fong & Vedaldi 2017) and its extremal variant
(Fong, Patrick & Vedaldi 2019), with a blur as the deleting transformation.

The mask m in [0,1] (1 = keep) lives on a grid ``mask_scale`` times coarser than the
input and is upsampled bilinearly; the perturbed input is x*m + blur(x)*(1-m).

- deletion: minimise  l1 * mean(1 - m) + tv * TV_beta(m) + p_c(perturbed + noise)
  (p_c the target's softmax probability; the noise, seeded, is the stochastic
  perturbation of the paper). Relevance = 1 - m: what has to be blurred to drop the score.
- extremal (preservation game): maximise S_c(perturbed) subject to area(m) = a, enforced as
  lambda * mean((sort(m) - r_a)^2), r_a the sorted mask of a region of fraction a, lambda
  ramped linearly to 300 over the first half of the iterations.
  Relevance = m: the region of area a that keeps the score highest.
Both by Adam with the mask clamped to [0,1] after every step; all samples of the batch
are optimised together (independent losses)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from workers.explain.base import Attribution, Context, register, target_scores
from workers.explain.perturb_utils import gaussian_blur, generator, seed_of

AREA_WEIGHT = 300.0  # lambda of the extremal area constraint (TorchRay's default weight)
NOISE = 0.05  # std of the stochastic perturbation, on the [0,1] pixel scale


def tv_norm(m: torch.Tensor, beta: float) -> torch.Tensor:
    dy = (m[..., 1:, :] - m[..., :-1, :]).abs().pow(beta).flatten(1).mean(1)
    dx = (m[..., :, 1:] - m[..., :, :-1]).abs().pow(beta).flatten(1).mean(1)
    return dy + dx


def default_sigma(h: int, w: int) -> float:
    return 10.0 * max(h, w) / 224.0


@register("meaningful_perturbation")
def meaningful_perturbation(ctx: Context) -> Attribution:
    p = ctx.params
    net, x, t = ctx.net, ctx.x.detach(), ctx.targets
    n, c, h, w = x.shape
    sigma = p.blur_sigma if p.blur_sigma is not None else default_sigma(h, w)
    blurred = gaussian_blur(x, sigma)
    mh, mw = max(1, -(-h // p.mask_scale)), max(1, -(-w // p.mask_scale))
    extremal = p.variant == "extremal"
    theta = torch.full((n, 1, mh, mw), 0.5 if extremal else 1.0, dtype=x.dtype, device=x.device)
    theta.requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=p.learning_rate)
    g = generator(p.seed)
    _, std = ctx.model.mean_std()
    k_keep = int(round(p.area * h * w))
    ref = torch.zeros(h * w, dtype=x.dtype, device=x.device)
    if k_keep > 0:
        ref[-k_keep:] = 1.0
    with torch.enable_grad():
        for it in range(p.iterations):
            if it % 10 == 0:
                ctx.progress(it / p.iterations)
            m = F.interpolate(theta, size=(h, w), mode="bilinear", align_corners=False)
            xm = x * m + blurred * (1 - m)
            if extremal:
                score = target_scores(net(xm), t)
                area = ((m.flatten(1).sort(dim=1).values - ref) ** 2).mean(1)
                # the constraint's weight ramps up (as TorchRay's growing regulariser): first the
                # score shapes the mask, then the area is enforced
                lam = AREA_WEIGHT * min(1.0, (it + 1) / (0.5 * p.iterations))
                loss = (-score + lam * area).sum()
            else:
                noise = torch.randn(xm.shape, generator=g, dtype=x.dtype).to(x.device) * (NOISE / std)
                prob = torch.softmax(net(xm + noise), 1).gather(1, t.view(-1, 1)).squeeze(1)
                loss = (p.l1_coeff * (1 - theta).abs().flatten(1).mean(1) + p.tv_coeff * tv_norm(theta, p.tv_beta)
                        + prob).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                theta.clamp_(0, 1)
    with torch.no_grad():
        m = F.interpolate(theta.detach(), size=(h, w), mode="bilinear", align_corners=False)
        xm = x * m + blurred * (1 - m)
        pm = torch.softmax(net(xm), 1).gather(1, t.view(-1, 1)).squeeze(1)
        p0 = torch.softmax(net(x), 1).gather(1, t.view(-1, 1)).squeeze(1)
    ctx.progress(1.0)
    rel = m if extremal else 1 - m
    meta = [{"target_probability": float(p0[i]), "perturbed_target_probability": float(pm[i]),
             "kept_fraction": float(m[i].mean())} for i in range(n)]
    used = {"variant": p.variant, "iterations": p.iterations, "blur_sigma": sigma, "learning_rate": p.learning_rate,
            "mask_scale": p.mask_scale, "seed": seed_of(p.seed)}
    if extremal:
        used["area"] = p.area
    else:
        used.update(l1_coeff=p.l1_coeff, tv_coeff=p.tv_coeff, tv_beta=p.tv_beta)
    return Attribution(rel.clone(), used_params=used, meta=meta)
