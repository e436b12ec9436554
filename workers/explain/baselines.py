"""Reference images the methods compare the input with, on the model's normalised input scale:
the one baseline builder (:func:`baseline`: integrated gradients' baselines, DeepLIFT's reference,
the fills of occlusion, LIME and meaningful perturbation, the canvases of the deletion/insertion
and faithfulness metrics) and the one Gaussian blur (:func:`gaussian_blur`). See
docs/architecture.md.

Blurring commutes with the per-channel affine normalisation, so blurring the normalised input
equals normalising the blurred image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from common.images import decode_image
from workers.errors import ExplainError, MethodError
from workers.models.loading import LoadedModel

# pixel values of the named constant baselines, on the [0, 1] pixel scale
PIXEL = {"black": 0.0, "white": 1.0, "gray": 0.5}


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


def default_blur_sigma(x: torch.Tensor) -> float:
    """The blur baseline's sigma when none is given: min(H, W) / 10."""
    return min(x.shape[-2:]) / 10.0


def baseline(
    model: LoadedModel,
    x: torch.Tensor,
    kind: str | float,
    *,
    blur_sigma: float | None = None,
    seed: int = 0,
    max_image_pixels: int | None = None,
) -> torch.Tensor:
    """A baseline image (N, C, H, W) for the normalised batch ``x``, in the same space.

    ``kind``: a [0, 1] pixel value (every pixel and channel), black | white | gray (pixel 0, 1, 0.5),
    mean (each image's per-channel mean), blur (:func:`gaussian_blur` of ``x``, ``blur_sigma``,
    default :func:`default_blur_sigma`), uniform (pixel noise U(0, 1), one draw from a generator
    seeded with ``seed`` shared by the batch, so an image's map does not depend on its batch), or a
    base64 PNG/JPEG (at most ``max_image_pixels``), resized and normalised like the input."""
    if isinstance(kind, float | int) or kind in PIXEL:
        value = float(kind) if isinstance(kind, float | int) else PIXEL[kind]
        return model.pixel_to_input(value).to(x).expand_as(x).clone()
    if kind == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x).clone()
    if kind == "blur":
        return gaussian_blur(x, blur_sigma if blur_sigma is not None else default_blur_sigma(x))
    if kind == "uniform":
        lo, hi = (b.to(x.dtype) for b in model.input_bounds())
        g = torch.Generator().manual_seed(int(seed))
        u = torch.rand(x.shape[1:], generator=g, dtype=torch.float32).to(device=x.device, dtype=x.dtype)
        return (lo + u * (hi - lo)).expand_as(x).clone()
    if max_image_pixels is None:
        raise ValueError(f"unknown baseline {kind[:40]!r}")
    try:
        img = decode_image(kind, max_image_pixels)
    except ExplainError as e:
        raise MethodError(f"baseline image: {e.detail}", field="baseline") from None
    return model.preprocess([img]).to(device=x.device, dtype=x.dtype).expand_as(x).clone()
