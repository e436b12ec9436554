"""§2.1: LIME (Ribeiro et al.) on superpixels.

1. Superpixels of the image on the [0,1] pixel scale: SLIC (``segments`` = n_segments,
   compactness 10) or quickshift (LIME's defaults kernel_size 4, max_dist 200, ratio 0.2 at 224 px,
   kernel and distance scaled with the image side).
2. ``samples`` binary vectors z (superpixel on/off) drawn Bernoulli(1/2) from the seed; the
   first is all ones (the image itself), as in LIME. Off superpixels take the fill.
3. Sample weight exp(-d^2 / (2 w^2)) with d = 1 - cos(x, x') between the flattened
   normalised inputs (Captum's default similarity kernel).
4. Weighted ridge regression of the target's score on z (intercept not penalised); the
   relevance of a pixel is its superpixel's coefficient.

The score (``score``): log_odds (default) = log(p_t / (1 - p_t)) = z_t - logsumexp_{j!=t} z_j
from the logits z - the probability on the logit link, as KernelSHAP's ``link="logit"``
(Lundberg & Lee 2017); logit = the pre-softmax z_t (what Captum's Lime explains when the
forward function returns logits); probability = softmax p_t (Ribeiro et al.'s original). The
probability is exactly 1.0 in float32 for confident predictions, then constant over most
perturbations and the surrogate's coefficients are 0; log_odds and logit keep their resolution.
A sample whose score does not vary over the draws (zero map) gets a ``warning`` in its metadata."""

from __future__ import annotations

import numpy as np
import torch
from skimage.segmentation import quickshift, slic

from workers.explain.base import Attribution, Context, register
from workers.explain.baselines import baseline
from workers.explain.perturb_utils import batch_for, generator, log_odds, seed_of, softmax_saturated


def lime_score(logits: torch.Tensor, targets: torch.Tensor, score: str) -> torch.Tensor:
    """The per-sample value the surrogate models (float32 logits in, float64 out)."""
    if score == "log_odds":
        return log_odds(logits.double(), targets)
    if score == "logit":
        return logits.double().gather(1, targets.view(-1, 1)).squeeze(1)
    if score == "probability":
        return torch.softmax(logits.float(), 1).gather(1, targets.view(-1, 1)).squeeze(1).double()
    raise ValueError(f"unknown score {score!r}")


def segment(model, x: torch.Tensor, method: str, segments: int) -> np.ndarray:
    """(C, H, W) normalised image -> int64 (H, W) superpixel labels 0..K-1."""
    m, s = model.mean_std()
    img = (x[None] * s + m)[0].clamp(0, 1).permute(1, 2, 0).cpu().double().numpy()
    if method == "slic":
        if img.shape[2] == 1:
            seg = slic(img[..., 0], n_segments=segments, compactness=10, start_label=0, channel_axis=None)
        else:
            seg = slic(img, n_segments=segments, compactness=10, start_label=0, channel_axis=-1)
    else:
        if img.shape[2] == 1:
            img = np.repeat(img, 3, axis=2)
        # LIME's parameters are for 224 px images: the kernel shrinks with the image
        ks = max(1.0, 4.0 * min(img.shape[:2]) / 224.0)
        seg = quickshift(img, kernel_size=ks, max_dist=200 * ks / 4.0, ratio=0.2, rng=0)
    _, seg = np.unique(seg, return_inverse=True)  # relabel 0..K-1
    return seg.reshape(img.shape[:2]).astype(np.int64)


def superpixel_fill(x: torch.Tensor, seg: torch.Tensor, k: int) -> torch.Tensor:
    """Each superpixel painted with its own mean colour: (C, H, W)."""
    c = x.shape[0]
    flat = x.reshape(c, -1)
    idx = seg.reshape(-1)
    sums = torch.zeros(c, k, dtype=x.dtype, device=x.device).index_add_(1, idx, flat)
    counts = torch.bincount(idx, minlength=k).to(x.dtype).clamp_min(1)
    return (sums / counts)[:, idx].reshape_as(x)


def draws(samples: int, k: int, seed: int | None) -> torch.Tensor:
    z = torch.bernoulli(torch.full((samples, k), 0.5), generator=generator(seed))
    z[0] = 1.0
    return z


def cosine_kernel(x: torch.Tensor, xs: torch.Tensor, width: float) -> torch.Tensor:
    """exp(-d^2 / (2 w^2)), d = 1 - cos(x, x') of flattened inputs; x (C,H,W), xs (S,C,H,W)."""
    a = x.reshape(1, -1).double()
    b = xs.reshape(xs.shape[0], -1).double()
    cos = (b @ a.T).squeeze(1) / (a.norm() * b.norm(dim=1)).clamp_min(1e-12)
    d = 1 - cos
    return torch.exp(-(d**2) / (2 * width**2))


def weighted_ridge(
    z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, float, float]:
    """argmin_b,beta sum_i w_i (y_i - b - z_i beta)^2 + alpha |beta|^2 -> (beta, b, weighted R^2)."""
    z, y, w = z.double(), y.double(), w.double()
    sw = w.sum()
    zm = (w[:, None] * z).sum(0) / sw
    ym = (w * y).sum() / sw
    zc, yc = z - zm, y - ym
    a = zc.T @ (w[:, None] * zc) + alpha * torch.eye(z.shape[1], dtype=z.dtype)
    beta = torch.linalg.solve(a, zc.T @ (w * yc))
    b = ym - zm @ beta
    res = y - b - z @ beta
    ss_res = (w * res**2).sum()
    ss_tot = (w * yc**2).sum()
    r2 = float(1 - ss_res / ss_tot) if ss_tot > 0 else 0.0
    return beta, float(b), r2


def lime_one(
    ctx: Context, i: int, seg: torch.Tensor, k: int, z: torch.Tensor, fill: torch.Tensor, progress=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Target scores and kernel weights of the perturbed copies of sample i."""
    x = ctx.x[i].detach()
    t = int(ctx.targets[i])
    chunk = batch_for(ctx.x, ctx.capped(256, backward=False))  # the job's memory bound
    ys, ws = [], []
    zd = z.to(x.device, x.dtype)
    with torch.no_grad():
        for s in range(0, z.shape[0], chunk):
            mask = zd[s : s + chunk][:, seg].unsqueeze(1)  # (B, 1, H, W)
            imgs = x * mask + fill * (1 - mask)
            tt = torch.full((imgs.shape[0],), t, dtype=torch.long, device=imgs.device)
            ys.append(lime_score(ctx.net(imgs), tt, ctx.params.score).cpu())
            ws.append(cosine_kernel(x, imgs, ctx.params.kernel_width).cpu())
            if progress is not None:
                progress(min(s + chunk, z.shape[0]) / z.shape[0])
    return torch.cat(ys), torch.cat(ws)


def _warning(score: str, spread: float, saturated: bool) -> str:
    if spread == 0 and score == "probability" and saturated:
        return (
            "zero map: the target's softmax probability is exactly 0 or 1 in float32 on every perturbed image "
            "(saturated); use score=log_odds or score=logit"
        )
    if spread == 0:
        return "zero map: the target's score is the same on every perturbed image"
    return "zero map: the surrogate's coefficients are all zero"


@register("lime")
def lime(ctx: Context) -> Attribution:
    p = ctx.params
    n, _, h, w = ctx.x.shape
    maps = torch.zeros(n, 1, h, w, dtype=ctx.x.dtype, device=ctx.x.device)
    meta = []
    blur = baseline(ctx.model, ctx.x.detach(), "blur", blur_sigma=max(h, w) / 16) if p.fill == "blur" else None
    with torch.no_grad():
        sat = softmax_saturated(ctx.net(ctx.x.detach()), ctx.targets).cpu()
    for i in range(n):
        prog = ctx.progress.sub(i / n, (i + 1) / n)
        prog(0.0)
        seg_np = segment(ctx.model, ctx.x[i].detach(), p.segmentation, p.segments)
        seg = torch.from_numpy(seg_np).to(ctx.x.device)
        k = int(seg_np.max()) + 1
        if p.fill == "mean":
            fill = superpixel_fill(ctx.x[i].detach(), seg, k)
        elif p.fill == "blur":
            fill = blur[i]
        else:
            fill = baseline(ctx.model, ctx.x[i : i + 1].detach(), p.fill)[0]
        z = draws(p.samples, k, seed_of(p.seed) + i)
        y, wts = lime_one(ctx, i, seg, k, z, fill, prog)
        beta, b, r2 = weighted_ridge(z, y, wts, p.alpha)
        maps[i, 0] = beta.to(maps.dtype).to(maps.device)[seg]
        mi = {"superpixels": k, "intercept": b, "weighted_r2": r2, "score_range": float(y.max() - y.min())}
        if not bool((maps[i] != 0).any()):
            mi["warning"] = _warning(p.score, float(y.max() - y.min()), bool(sat[i]))
        elif p.score == "probability" and bool(sat[i]):
            mi["warning"] = (
                "the target's softmax probability of the image is exactly 0 or 1 in float32 (saturated): "
                "the map only reflects the few perturbed images where it moved; use score=log_odds"
            )
        meta.append(mi)
    return Attribution(
        maps,
        used_params={
            "samples": p.samples,
            "segments": p.segments,
            "segmentation": p.segmentation,
            "score": p.score,
            "fill": p.fill,
            "kernel_width": p.kernel_width,
            "alpha": p.alpha,
            "seed": seed_of(p.seed),
        },
        meta=meta,
    )
