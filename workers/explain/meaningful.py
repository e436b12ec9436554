"""§2.1: meaningful perturbation (Fong & Vedaldi 2017) and its extremal variant
(Fong, Patrick & Vedaldi 2019), with a blur as the deleting transformation.

The mask m in [0,1] (1 = keep) lives on a grid ``mask_scale`` times coarser than the
input and is upsampled bilinearly; the perturbed input is x*m + blur(x)*(1-m).

- deletion: minimise  l1 * mean(1 - m) + tv * TV_beta(m) + f_c(perturbed + noise)
  (the noise, seeded, is the stochastic perturbation of the paper). Relevance = 1 - m: what
  has to be blurred to drop the score. f_c (``score``):
  * probability: p_c, the target's softmax probability (Fong & Vedaldi 2017). When p_c rounds
    to 1.0 in float32 (a saturated prediction) its gradient is exactly 0, the mask never moves
    and the map is zero (reported as a ``warning``).
  * log_odds (default): the target's log-odds s = z_c - logsumexp_{j!=c} z_j (from the logits,
    never saturates; p_c = sigmoid(s)), hinged at the log-odds s_q of the probability ``drop_to``
    and scaled to [0, 1] by its value on the image:  f = (max(s, s_q) - s_q) / (s(x) - s_q).
    f falls from 1 to 0 as the blur drives p_c down to ``drop_to``; below that it is flat, so
    the L1/TV terms shrink the mask back to the boundary: the smallest (regularised) blur
    mask that drops the target's probability to ``drop_to``. Being a ratio of logit
    differences, f and hence the mask do not depend on the scale of the logits.
- extremal (preservation game): maximise S_c(perturbed) (the logit: no saturation) subject to
  area(m) = a, enforced as
  lambda * mean((sort(m) - r_a)^2), r_a the sorted mask of a region of fraction a, lambda
  ramped linearly to 300 over the first half of the iterations.
  Relevance = m: the region of area a that keeps the score highest.
Both by Adam with the mask clamped to [0,1] after every step; all samples of the batch
are optimised together (independent losses)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from workers.explain.base import Attribution, Context, register, target_scores
from workers.explain.baselines import baseline
from workers.explain.perturb_utils import generator, log_odds, seed_of, softmax_saturated

AREA_WEIGHT = 300.0  # lambda of the extremal area constraint (TorchRay's default weight)
NOISE = 0.05  # std of the stochastic perturbation, on the [0,1] pixel scale


def tv_norm(m: torch.Tensor, beta: float) -> torch.Tensor:
    dy = (m[..., 1:, :] - m[..., :-1, :]).abs().pow(beta).flatten(1).mean(1)
    dx = (m[..., :, 1:] - m[..., :, :-1]).abs().pow(beta).flatten(1).mean(1)
    return dy + dx


def default_sigma(h: int, w: int) -> float:
    return 10.0 * max(h, w) / 224.0


class _Objective:
    """The loss of one Adam step over the mask parameters theta (N, 1, mh, mw), both variants."""

    def __init__(self, ctx: Context, blurred: torch.Tensor, s0: torch.Tensor):
        p, x = ctx.params, ctx.x.detach()
        h, w = x.shape[-2:]
        self.ctx, self.p, self.x, self.blurred = ctx, p, x, blurred
        self.extremal = p.variant == "extremal"
        k_keep = int(round(p.area * h * w))
        self.ref = torch.zeros(h * w, dtype=x.dtype, device=x.device)
        if k_keep > 0:
            self.ref[-k_keep:] = 1.0
        self.s_q = math.log(p.drop_to / (1 - p.drop_to))
        self.active = s0 > self.s_q  # otherwise the target is already below drop_to: nothing to delete (f = 0)
        self.span = torch.where(self.active, s0 - self.s_q, torch.ones_like(s0))
        self.g = generator(p.seed)
        self.noise_scale = NOISE / ctx.model.mean_std()[1]

    def mask(self, theta: torch.Tensor) -> torch.Tensor:
        return F.interpolate(theta, size=tuple(self.x.shape[-2:]), mode="bilinear", align_corners=False)

    def __call__(self, theta: torch.Tensor, it: int) -> torch.Tensor:
        p, net, t = self.p, self.ctx.net, self.ctx.targets
        m = self.mask(theta)
        xm = self.x * m + self.blurred * (1 - m)
        if self.extremal:
            score = target_scores(net(xm), t)
            area = ((m.flatten(1).sort(dim=1).values - self.ref) ** 2).mean(1)
            # the constraint's weight ramps up (as TorchRay's growing regulariser): first the
            # score shapes the mask, then the area is enforced
            lam = AREA_WEIGHT * min(1.0, (it + 1) / (0.5 * p.iterations))
            return (-score + lam * area).sum()
        noise = torch.randn(xm.shape, generator=self.g, dtype=self.x.dtype).to(self.x.device) * self.noise_scale
        z = net(xm + noise)
        if p.score == "probability":
            f = torch.softmax(z, 1).gather(1, t.view(-1, 1)).squeeze(1)
        else:
            f = torch.where(
                self.active, (log_odds(z, t).clamp_min(self.s_q) - self.s_q) / self.span, torch.zeros_like(self.span)
            )
        return (p.l1_coeff * (1 - theta).abs().flatten(1).mean(1) + p.tv_coeff * tv_norm(theta, p.tv_beta) + f).sum()


def _optimise(ctx: Context, objective: _Objective) -> torch.Tensor:
    """Adam on theta, clamped to [0, 1] after every step; returns theta."""
    p, x = ctx.params, objective.x
    n, _, h, w = x.shape
    mh, mw = max(1, -(-h // p.mask_scale)), max(1, -(-w // p.mask_scale))
    theta = torch.full((n, 1, mh, mw), 0.5 if objective.extremal else 1.0, dtype=x.dtype, device=x.device)
    theta.requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=p.learning_rate)
    with torch.enable_grad():
        for it in range(p.iterations):
            if it % 10 == 0:
                ctx.progress(it / p.iterations)
            loss = objective(theta, it)
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                theta.clamp_(0, 1)
    return theta.detach()


def _warning(p, extremal: bool, saturated: bool, zero: bool, p0: float) -> str | None:
    if p.score == "probability" and saturated and not extremal:
        # the probability's gradient is 0 (or noise-level: Adam still moves the mask a little)
        return (
            "the target's softmax probability is exactly 0 or 1 in float32 (saturated): the "
            "probability objective has no gradient and the map is (near) zero and meaningless; "
            "use score=log_odds"
        )
    if zero:
        if not extremal and p.score == "log_odds" and p0 <= p.drop_to:
            return "zero map: the target's probability is already at most drop_to, nothing to delete"
        return "zero map: the mask did not move"
    return None


def _used(p, sigma: float, extremal: bool) -> dict:
    used = {
        "variant": p.variant,
        "iterations": p.iterations,
        "blur_sigma": sigma,
        "learning_rate": p.learning_rate,
        "mask_scale": p.mask_scale,
        "seed": seed_of(p.seed),
    }
    if extremal:
        used["area"] = p.area
    else:
        used.update(score=p.score, l1_coeff=p.l1_coeff, tv_coeff=p.tv_coeff, tv_beta=p.tv_beta)
        if p.score == "log_odds":
            used["drop_to"] = p.drop_to
    return used


@register("meaningful_perturbation")
def meaningful_perturbation(ctx: Context) -> Attribution:
    p = ctx.params
    net, x, t = ctx.net, ctx.x.detach(), ctx.targets
    h, w = x.shape[-2:]
    sigma = p.blur_sigma if p.blur_sigma is not None else default_sigma(h, w)
    blurred = baseline(ctx.model, x, "blur", blur_sigma=sigma)
    with torch.no_grad():
        logits0 = net(x)
        s0 = log_odds(logits0.float(), t)
    objective = _Objective(ctx, blurred, s0)
    theta = _optimise(ctx, objective)
    with torch.no_grad():
        m = objective.mask(theta)
        zm = net(x * m + blurred * (1 - m)).float()
        pm = torch.softmax(zm, 1).gather(1, t.view(-1, 1)).squeeze(1)
        p0 = torch.softmax(logits0.float(), 1).gather(1, t.view(-1, 1)).squeeze(1)
        sm = log_odds(zm, t)
        sat = softmax_saturated(logits0, t)
    ctx.progress(1.0)
    rel = m if objective.extremal else 1 - m
    meta = []
    for i in range(x.shape[0]):
        mi = {
            "target_probability": float(p0[i]),
            "perturbed_target_probability": float(pm[i]),
            "target_log_odds": float(s0[i]),
            "perturbed_target_log_odds": float(sm[i]),
            "kept_fraction": float(m[i].mean()),
        }
        warning = _warning(p, objective.extremal, bool(sat[i]), not bool((rel[i] != 0).any()), float(p0[i]))
        if warning:
            mi["warning"] = warning
        meta.append(mi)
    return Attribution(rel.clone(), used_params=_used(p, sigma, objective.extremal), meta=meta)
