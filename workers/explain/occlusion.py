"""§2.1, Fig. 1: occlusion with a sliding window (Zeiler & Fergus).

Window positions start at 0 and advance by ``stride`` until the window reaches the
border: ceil((H - window) / stride) + 1 positions per axis; the last ones may stick
out of the image and are cropped, so every pixel is covered when stride <= window.
The window hides all channels. Relevance of a pixel = mean over the windows that
cover it of S_c(x) - S_c(x with the window filled), S_c the target's pre-softmax
score. Many occluded copies go through the network in one forward pass."""

from __future__ import annotations

import math

import torch

from workers.errors import MethodError
from workers.explain.base import Attribution, Context, register, target_scores
from workers.explain.baselines import baseline
from workers.explain.perturb_utils import batch_for


def positions(size: int, window: int, stride: int) -> list[int]:
    return [i * stride for i in range(math.ceil((size - window) / stride) + 1)]


def _indicators(size: int, window: int, stride: int, dtype, device) -> torch.Tensor:
    """(positions, size): row k is 1 on the pixels the k-th window position covers."""
    pos = positions(size, window, stride)
    ind = torch.zeros(len(pos), size, dtype=dtype, device=device)
    for k, p in enumerate(pos):
        ind[k, p : p + window] = 1
    return ind


def occlusion_maps(ctx: Context, window: int, stride: int, fill: torch.Tensor) -> torch.Tensor:
    """The windows form a grid (row positions x column positions), so a window's mask is the
    outer product of a row and a column indicator, the coverage count is the outer product
    of the 1-D counts, and the accumulation of the drops D (rows x columns) is ry^T D cx:
    no per-window loop. The (sample, window) pairs of the whole batch go through the network
    ``batch_for(x)`` at a time (one forward per chunk, progress after each)."""
    net, x = ctx.net, ctx.x.detach()
    n, _, h, w = x.shape
    wy, wx = min(window, h), min(window, w)
    ry = _indicators(h, wy, stride, torch.float64, x.device)  # (R, H)
    cx = _indicators(w, wx, stride, torch.float64, x.device)  # (K, W)
    rows, cols = ry.shape[0], cx.shape[0]
    per = rows * cols
    ry_b, cx_b = ry.bool(), cx.bool()
    chunk = batch_for(x, ctx.capped(256, backward=False))  # the job's memory bound
    drops = torch.zeros(n * per, dtype=torch.float64, device=x.device)
    total = n * per
    ctx.progress(0.0)
    with torch.inference_mode():
        base = target_scores(net(x), ctx.targets).double()
        for s in range(0, total, chunk):
            j = torch.arange(s, min(s + chunk, total), device=x.device)
            i, p = j // per, j % per
            mask = (ry_b[p // cols][:, :, None] & cx_b[p % cols][:, None, :]).unsqueeze(1)  # (B, 1, H, W)
            imgs = torch.where(mask, fill[i], x[i])
            drops[s : s + len(j)] = base[i] - target_scores(net(imgs), ctx.targets[i]).double()
            ctx.progress(min(s + chunk, total) / total)
    d = drops.view(n, rows, cols)
    sums = torch.einsum("rh,nrk,kw->nhw", ry, d, cx)
    count = ry.sum(0)[:, None] * cx.sum(0)[None, :]
    return (sums / count).unsqueeze(1).to(x.dtype)


@register("occlusion")
def occlusion(ctx: Context) -> Attribution:
    p = ctx.params
    h, w = ctx.x.shape[-2:]
    if p.window > max(h, w):
        raise MethodError(f"window {p.window} is larger than the model's input {h}x{w}", field="window")
    sigma = p.blur_sigma if p.blur_sigma is not None else p.window / 2
    fill = baseline(ctx.model, ctx.x.detach(), p.fill, blur_sigma=sigma)
    maps = occlusion_maps(ctx, p.window, p.stride, fill)
    used = {"window": p.window, "stride": p.stride, "fill": p.fill}
    if p.fill == "blur":
        used["blur_sigma"] = sigma
    return Attribution(maps, used_params=used)
