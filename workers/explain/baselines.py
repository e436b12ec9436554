"""Reference images the methods compare the input with, on the model's normalised input scale:
the one Gaussian blur (integrated gradients' and DeepLIFT's blur baselines, the blur fills of
occlusion, LIME and meaningful perturbation, the blurred canvas of the insertion metric).
See docs/architecture.md.

Blurring commutes with the per-channel affine normalisation, so blurring the normalised input
equals normalising the blurred image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W) per channel, sigma in pixels.

    Kernel radius ceil(3 sigma) (99.7 % of the mass), cut at size - 1 along an axis shorter than
    that and renormalised, so that a constant image stays constant. Reflect padding (the image
    mirrored about its border pixel): the border is filled from the image's own neighbourhood
    instead of repeating the border pixel 3 sigma times (replicate) or pulling in zeros
    (constant), so the blur has no border bias. sigma <= 0: the image itself."""
    if sigma <= 0:
        return x
    h, w = x.shape[-2:]
    radius = max(1, int(math.ceil(3.0 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    out = x
    for dim, size in ((3, w), (2, h)):
        r = min(radius, size - 1)
        kk = k[radius - r : radius + r + 1]
        kk = kk / kk.sum()
        if r == 0:
            continue
        if dim == 3:
            out = F.pad(out, (r, r, 0, 0), mode="reflect")
            out = F.conv2d(out, kk.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        else:
            out = F.pad(out, (0, 0, r, r), mode="reflect")
            out = F.conv2d(out, kk.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return out
