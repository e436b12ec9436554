"""The procedural shapes data set of the demo model.

64x64 RGB images of one of ten shape classes (``LABELS``) at a random position,
scale, rotation and colour over a cluttered, noisy background (a smooth colour
gradient, small blobs, line segments and Gaussian pixel noise), each with its
ground-truth object mask.

Everything is deterministic from the seed: image ``i`` of ``generate(n, seed)``
is drawn from its own ``numpy`` generator seeded with ``(seed, i)``, so it does
not depend on ``n`` (``generate(10, s)`` is the first ten of ``generate(100, s)``).

    from workers.training.shapes import LABELS, generate
    images, labels, masks = generate(1000, seed=1)
    # images uint8 (n, 64, 64, 3), labels int64 (n,), masks bool (n, 64, 64)

Hooks for variants (e.g. a Clever-Hans watermark): ``generate(..., watermark=f)``
calls ``f(image, label, rng)`` on each finished image (uint8 HxWx3, may be
modified in place or replaced by the returned array); ``rng`` is a separate
generator per image, so the base images stay identical with or without the hook.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

LABELS: list[str] = ["circle", "square", "triangle", "star", "cross", "bar", "heart", "arrow", "ring", "crescent"]

SS = 4  # supersampling factor of the shape's alpha mask (anti-aliased edges)

Watermark = Callable[[np.ndarray, int, np.random.Generator], "np.ndarray | None"]


# ---- shape outlines in unit coordinates (fit in the unit disc, y down) -------------------
def _regular(k: int, r: float = 1.0, phase: float = -math.pi / 2) -> np.ndarray:
    t = phase + 2 * math.pi * np.arange(k) / k
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _star() -> np.ndarray:
    outer = _regular(5, 1.0)
    inner = _regular(5, 0.45, -math.pi / 2 + math.pi / 5)
    return np.stack([outer, inner], 1).reshape(-1, 2)


def _cross(h: float = 0.33) -> np.ndarray:
    return np.array(
        [(-h, -1), (h, -1), (h, -h), (1, -h), (1, h), (h, h), (h, 1), (-h, 1), (-h, h), (-1, h), (-1, -h), (-h, -h)],
        dtype=float,
    )


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    p = np.stack([x, y + 2.5], 1)
    return p / np.abs(p).max()


def _arrow() -> np.ndarray:
    return np.array(
        [(-1, -0.22), (0.15, -0.22), (0.15, -0.62), (1, 0), (0.15, 0.62), (0.15, 0.22), (-1, 0.22)], dtype=float
    )


_CIRCLE = _regular(48)
_OUTLINES = {
    "circle": [(_CIRCLE, 255)],
    "square": [(_regular(4, 1.0, math.pi / 4), 255)],
    "triangle": [(_regular(3, 1.1) + [0, 0.1], 255)],
    "star": [(_star(), 255)],
    "cross": [(_cross(), 255)],
    "bar": [(np.array([(-1, -0.3), (1, -0.3), (1, 0.3), (-1, 0.3)]), 255)],
    "heart": [(_heart(), 255)],
    "arrow": [(_arrow(), 255)],
    "ring": [(_CIRCLE, 255), (_CIRCLE * 0.5, 0)],
    "crescent": [(_CIRCLE, 255), (_CIRCLE * 0.75 + [0.5, -0.1], 0)],
}


# how far each outline reaches from its centre, in units of the radius (keeps the object in the image)
_EXTENT = {k: float(max(np.linalg.norm(p, axis=1).max() for p, fill in v if fill)) for k, v in _OUTLINES.items()}


def shape_alpha(cls: int, cx: float, cy: float, radius: float, angle: float, size: int) -> np.ndarray:
    """Anti-aliased coverage (float32 HxW in [0,1]) of shape ``cls`` centred at (cx, cy) pixels."""
    big = Image.new("L", (size * SS, size * SS), 0)
    d = ImageDraw.Draw(big)
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    for pts, fill in _OUTLINES[LABELS[cls]]:
        p = (pts @ rot.T) * radius + [cx, cy]
        d.polygon([tuple(v) for v in (p * SS).tolist()], fill=fill)
    small = big.resize((size, size), Image.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _colour(rng: np.random.Generator, avoid: np.ndarray | None = None, min_dist: float = 0.0) -> np.ndarray:
    for _ in range(50):
        col = rng.uniform(0, 255, 3)
        if avoid is None or np.linalg.norm(col - avoid) >= min_dist:
            return col
    return col


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


def _clutter_colour(rng: np.random.Generator, base: np.ndarray) -> tuple[int, ...]:
    return tuple(int(v) for v in np.clip(base + rng.normal(0, 45, 3), 0, 255))


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A smooth two-colour gradient with clutter (line segments and small blobs of colours near the
    background's, so the object stays the most salient thing); returns (float32 HxWx3, mean colour)."""
    c0 = rng.uniform(30, 225, 3)
    c1 = np.clip(c0 + rng.normal(0, 35, 3), 0, 255)
    th = rng.uniform(0, 2 * math.pi)
    yy, xx = _grid(size)
    yy, xx = yy / (size - 1), xx / (size - 1)
    t = (np.cos(th) * (xx - 0.5) + np.sin(th) * (yy - 0.5)) + 0.5
    t = np.clip(t, 0, 1)[..., None]
    img = (c0 * (1 - t) + c1 * t).astype(np.float32)
    mean = (c0 + c1) / 2
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(pil)
    sc = size / 64
    for _ in range(int(rng.integers(1, 5))):  # line segments
        x0, y0, x1, y1 = rng.uniform(0, size, 4)
        d.line([(x0, y0), (x1, y1)], fill=_clutter_colour(rng, mean), width=1)
    for _ in range(int(rng.integers(1, 6))):  # small blobs
        x, y = rng.uniform(0, size, 2)
        rx, ry = rng.uniform(1.5, 3.5, 2) * sc
        d.ellipse([x - rx, y - ry, x + rx, y + ry], fill=_clutter_colour(rng, mean))
    return np.asarray(pil, dtype=np.float32), mean


def render_one(
    rng: np.random.Generator,
    cls: int,
    size: int = 64,
    noise: float = 8.0,
    min_radius: float = 0.22,
    max_radius: float = 0.38,
) -> tuple[np.ndarray, np.ndarray]:
    """One image (uint8 HxWx3) of class ``cls`` and its object mask (bool HxW, coverage >= 50 %).

    ``min_radius``/``max_radius``: the shape's outer radius as a fraction of the image size."""
    bg, bg_mean = _background(rng, size)
    radius = rng.uniform(min_radius, max_radius) * size
    margin = min(radius * _EXTENT[LABELS[cls]] + 1.5, size / 2)
    cx, cy = rng.uniform(margin, size - margin, 2)
    angle = rng.uniform(0, 2 * math.pi)
    alpha = shape_alpha(cls, cx, cy, radius, angle, size)
    fg = _colour(rng, bg_mean, 110.0).astype(np.float32)
    shade = rng.uniform(-25, 25, 3).astype(np.float32)  # a faint gradient across the object
    yy, xx = _grid(size)
    fg_img = fg + shade * ((xx - cx) / radius)[..., None]
    a = alpha[..., None]
    img = bg * (1 - a) + fg_img * a
    img = img + rng.normal(0, noise, img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), alpha >= 0.5


def generate(
    n: int,
    seed: int,
    size: int = 64,
    classes: np.ndarray | None = None,
    watermark: Watermark | None = None,
    **render_kw,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` images, labels and masks. Returns (uint8 (n,H,W,3), int64 (n,), bool (n,H,W)).

    Labels, unless ``classes`` is given: each block of ten consecutive images holds every class
    once, in an order drawn from the seed (balanced, and independent of ``n``)."""
    if classes is None:
        k = len(LABELS)
        blocks = (n + k - 1) // k
        classes = (
            np.concatenate([np.random.default_rng([seed, 0x5EED, b]).permutation(k) for b in range(blocks)])[:n]
            if n
            else np.empty(0, np.int64)
        )
    labels = np.asarray(classes, dtype=np.int64)
    if labels.shape != (n,):
        raise ValueError(f"classes must have shape ({n},)")
    images = np.empty((n, size, size, 3), np.uint8)
    masks = np.empty((n, size, size), bool)
    for i in range(n):
        ss = np.random.SeedSequence([seed, i])
        rng, wm_rng = (np.random.default_rng(s) for s in ss.spawn(2))
        img, m = render_one(rng, int(labels[i]), size, **render_kw)
        if watermark is not None:
            out = watermark(img, int(labels[i]), wm_rng)
            if out is not None:
                img = np.asarray(out, dtype=np.uint8)
        images[i], masks[i] = img, m
    return images, labels, masks


def to_tensor(images: np.ndarray, mean: float = 0.5, std: float = 0.25):
    """uint8 (n,H,W,3) -> normalised float32 torch tensor (n,3,H,W), as the registry's preprocessing
    (pixels / 255, then (x - mean) / std; shapes-cnn: mean 0.5, std 0.25)."""
    import torch

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - mean) / std
