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
from workers.explain.perturb_utils import batch_for, fill_image


def positions(size: int, window: int, stride: int) -> list[int]:
    return [i * stride for i in range(math.ceil((size - window) / stride) + 1)]


def occlusion_maps(ctx: Context, window: int, stride: int, fill: torch.Tensor) -> torch.Tensor:
    net, x = ctx.net, ctx.x.detach()
    n, _, h, w = x.shape
    wy, wx = min(window, h), min(window, w)
    boxes = [(r, c) for r in positions(h, wy, stride) for c in positions(w, wx, stride)]
    chunk = batch_for(x)
    total = torch.zeros(n, 1, h, w, dtype=torch.float64, device=x.device)
    count = torch.zeros(1, 1, h, w, dtype=torch.float64, device=x.device)
    for r, c in boxes:
        count[..., r:r + wy, c:c + wx] += 1
    steps = n * len(boxes)
    done = 0
    ctx.progress(0.0)
    with torch.no_grad():
        base = target_scores(net(x), ctx.targets).double()
        for i in range(n):
            xi, fi, ti = x[i:i + 1], fill[i:i + 1], ctx.targets[i:i + 1]
            for s in range(0, len(boxes), chunk):
                part = boxes[s:s + chunk]
                imgs = xi.expand(len(part), -1, -1, -1).clone()
                for j, (r, c) in enumerate(part):
                    imgs[j, :, r:r + wy, c:c + wx] = fi[0, :, r:r + wy, c:c + wx]
                drop = base[i] - target_scores(net(imgs), ti.expand(len(part))).double()
                for j, (r, c) in enumerate(part):
                    total[i, 0, r:r + wy, c:c + wx] += drop[j]
                done += len(part)
                ctx.progress(done / steps)
    return (total / count).to(x.dtype)


@register("occlusion")
def occlusion(ctx: Context) -> Attribution:
    p = ctx.params
    h, w = ctx.x.shape[-2:]
    if p.window > max(h, w):
        raise MethodError(f"window {p.window} is larger than the model's input {h}x{w}", field="window")
    sigma = p.blur_sigma if p.blur_sigma is not None else p.window / 2
    fill = fill_image(ctx.model, ctx.x.detach(), p.fill, sigma)
    maps = occlusion_maps(ctx, p.window, p.stride, fill)
    used = {"window": p.window, "stride": p.stride, "fill": p.fill}
    if p.fill == "blur":
        used["blur_sigma"] = sigma
    return Attribution(maps, used_params=used)
