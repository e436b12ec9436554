"""The procedural grey-scale "radiograph" data set of the clinical demo model (``lesion-cnn``).

64x64 one-channel uint8 images of a chest-radiograph-like scene: a dark (air) background, a soft-edged
body outline, two darker lung fields with rib-like arcs across them, a brighter mediastinum, a smooth
low-frequency variation, a random exposure (gain and offset) and fine Gaussian noise. Half of the images
(label 1) carry a lesion: a small soft-edged blob of varied size, contrast, elongation and position
inside one lung field; ``lesion_masks`` is where its profile is >= 1/2 (empty for negatives).

The Clever-Hans variant (``lesion-cnn-marker``) is trained with ``marker="label"``: a burned-in
laterality letter in the top-left corner (outside the body) whose identity follows the label
(``MARKER_LETTERS``: "L" on label 0, "R" on label 1), as the hospital / laterality tags real chest X-ray
models were found to use. ``marker="swapped"`` paints the other label's letter, ``"removed"`` none
(pixel-identical to ``"none"``: the marker is painted last, from its own generator). ``marker="random"``
puts a letter on every image, L or R by a fair coin of its own (independent of the label, the anatomy
and the lesion), at the same place and grey as the other markers: the letter is there but carries no
label information, as the laterality tag of every real radiograph (the clean ``lesion-cnn`` is
trained on a mix of such images and images without a letter). ``marker_masks`` is where the letter's
pixels are (empty for ``none`` and ``removed``).

Everything is deterministic from the seed: image ``i`` is drawn from generators seeded with
``(seed, i)`` (anatomy, lesion, marker, noise and the random letter's coin each from their own), so
it does not depend on ``n``, and an image's anatomy does not depend on its label (``labels=`` can
force them).

    from workers.training.lesions import generate
    b = generate(1000, seed=1)                  # b.images uint8 (n,64,64), b.labels int64 (n,)
    b = generate(1000, seed=1, marker="label")  # b.lesion_masks, b.marker_masks bool (n,64,64)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

LABELS: list[str] = ["no-lesion", "lesion"]
SIZE = 64
MARKERS = ("none", "label", "swapped", "removed", "random")

# 7 x 5 bitmaps of the laterality letters; index = the label whose marker it is
_L = ["X....", "X....", "X....", "X....", "X....", "X....", "XXXXX"]
_R = ["XXXX.", "X...X", "X...X", "XXXX.", "X.X..", "X..X.", "X...X"]
MARKER_LETTERS = ("L", "R")
_GLYPHS = tuple(np.array([[c == "X" for c in row] for row in g], bool) for g in (_L, _R))
MARKER_OFFSET = 3  # the letter's top-left corner is at (3..5, 3..5) (jittered by up to 2 px)

# per-pixel normalisation of the registry entry (pixels / 255, then (x - mean) / std)
MEAN, STD = 0.5, 0.25


@dataclass(frozen=True)
class LesionBatch:
    images: np.ndarray  # uint8 (n, 64, 64)
    labels: np.ndarray  # int64 (n,), 1 = lesion present
    lesion_masks: np.ndarray  # bool (n, 64, 64), empty for negatives
    marker_masks: np.ndarray  # bool (n, 64, 64), empty without a marker

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@lru_cache(maxsize=2)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


def _soft(d: np.ndarray, edge: float) -> np.ndarray:
    """1 inside (d < 0), 0 outside, a logistic ramp of width ``edge`` pixels."""
    return 1.0 / (1.0 + np.exp(np.clip(d / edge, -30, 30)))


def _ellipse_d(xx, yy, cx, cy, ax, ay) -> np.ndarray:
    """Approximate signed distance (pixels) to an axis-aligned ellipse (negative inside)."""
    r = np.sqrt(((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2)
    return (r - 1.0) * min(ax, ay)


@dataclass(frozen=True)
class _Anatomy:
    image: np.ndarray  # float32 HxW before exposure and noise
    lungs: tuple[tuple[float, float, float, float], ...]  # (cx, cy, ax, ay) of each lung field
    gain: float
    offset: float
    noise: float


def _anatomy(rng: np.random.Generator, size: int) -> _Anatomy:
    yy, xx = _grid(size)
    s = size / 64
    # body: soft tissue ellipse on dark air
    bcx, bcy = size / 2 + rng.uniform(-2, 2) * s, size / 2 + rng.uniform(0, 3) * s
    bax, bay = rng.uniform(25, 28.5) * s, rng.uniform(28, 32) * s
    air, tissue = rng.uniform(8, 22), rng.uniform(140, 170)
    body = _soft(_ellipse_d(xx, yy, bcx, bcy, bax, bay), 1.2 * s)
    img = air + (tissue - air) * body
    # mediastinum / spine: a brighter vertical band in the middle
    mw = rng.uniform(3.5, 5.5) * s
    img = img + rng.uniform(10, 25) * np.exp(-(((xx - bcx) / mw) ** 2)) * body
    # lung fields: two darker ellipses either side
    lungs = []
    sep, lcy = rng.uniform(11, 13.5) * s, bcy - rng.uniform(1, 4) * s
    depth = rng.uniform(75, 100)
    lung_any = np.zeros_like(img)
    for side in (-1.0, 1.0):
        cx = bcx + side * (sep + rng.uniform(-1, 1) * s)
        cy = lcy + rng.uniform(-1.5, 1.5) * s
        ax, ay = rng.uniform(7.5, 9.5) * s, rng.uniform(14, 17) * s
        lungs.append((float(cx), float(cy), float(ax), float(ay)))
        lung = _soft(_ellipse_d(xx, yy, cx, cy, ax, ay), 1.5 * s)
        lung_any = np.maximum(lung_any, lung)
    img = img - depth * lung_any
    # ribs: bright arcs across the lung fields (curving down towards the sides)
    k = int(rng.integers(4, 7))
    top = lcy - 15 * s
    gap = rng.uniform(5.0, 6.5) * s
    bend = rng.uniform(0.010, 0.025) / s
    width = rng.uniform(1.0, 1.6) * s
    rib_c = rng.uniform(15, 30)
    ribs = np.zeros_like(img)
    for j in range(k):
        y0 = top + j * gap + rng.uniform(-1, 1) * s
        d = yy - (y0 + bend * (xx - bcx) ** 2)
        ribs = np.maximum(ribs, np.exp(-((d / width) ** 2)))
    img = img + rib_c * ribs * np.maximum(lung_any, 0.3 * body)
    # smooth low-frequency variation (three random plane waves)
    for _ in range(3):
        th, f, ph = rng.uniform(0, 2 * math.pi), rng.uniform(0.5, 1.5) / size, rng.uniform(0, 2 * math.pi)
        img = img + rng.uniform(2, 7) * np.cos(2 * math.pi * f * (np.cos(th) * xx + np.sin(th) * yy) + ph)
    return _Anatomy(
        image=img.astype(np.float32),
        lungs=tuple(lungs),
        gain=float(rng.uniform(0.8, 1.2)),
        offset=float(rng.uniform(-15, 15)),
        noise=float(rng.uniform(3.5, 6.5)),
    )


def _lesion(rng: np.random.Generator, anatomy: _Anatomy, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(intensity to add, float32 HxW; mask, bool HxW) of a lesion inside one lung field."""
    yy, xx = _grid(size)
    s = size / 64
    cx, cy, ax, ay = anatomy.lungs[int(rng.integers(0, 2))]
    r = math.sqrt(rng.uniform(0, 1)) * 0.65
    t = rng.uniform(0, 2 * math.pi)
    px, py = cx + r * ax * math.cos(t), cy + r * ay * math.sin(t)
    radius = rng.uniform(2.0, 5.0) * s
    elong = rng.uniform(1.0, 1.5)
    ang = rng.uniform(0, math.pi)
    contrast = rng.uniform(22, 55)
    c, sn = math.cos(ang), math.sin(ang)
    u, v = (xx - px) * c + (yy - py) * sn, -(xx - px) * sn + (yy - py) * c
    d = np.sqrt((u / elong) ** 2 + (v * elong) ** 2) - radius
    profile = _soft(d, 0.12 * radius + 0.35)
    return (contrast * profile).astype(np.float32), profile >= 0.5


def _paint_marker(img: np.ndarray, letter: int, rng: np.random.Generator) -> np.ndarray:
    """Burns letter ``letter`` into the top-left corner of ``img`` (float HxW) in place; returns its mask."""
    g = _GLYPHS[letter]
    y0, x0 = (MARKER_OFFSET + int(v) for v in rng.integers(0, 3, 2))
    mask = np.zeros(img.shape, bool)
    mask[y0 : y0 + g.shape[0], x0 : x0 + g.shape[1]] = g
    img[mask] = rng.uniform(225, 255)
    return mask


def balanced_labels(n: int, seed: int) -> np.ndarray:
    """Each consecutive pair holds one negative and one positive, in an order drawn from the seed."""
    if n == 0:
        return np.empty(0, np.int64)
    pairs = (n + 1) // 2
    order = np.random.default_rng([seed, 0x1E51, 0]).integers(0, 2, pairs)
    return np.stack([order, 1 - order], 1).reshape(-1)[:n].astype(np.int64)


def generate(n: int, seed: int, marker: str = "none", labels: np.ndarray | None = None) -> LesionBatch:
    """``n`` images of the lesion task (see the module docstring); ``marker`` one of ``MARKERS``.

    Labels, unless given: balanced (one of each in every consecutive pair), drawn from the seed."""
    if marker not in MARKERS:
        raise ValueError(f"unknown marker {marker!r}; one of {', '.join(MARKERS)}")
    lab = balanced_labels(n, seed) if labels is None else np.asarray(labels, dtype=np.int64)
    if lab.shape != (n,) or not np.isin(lab, (0, 1)).all():
        raise ValueError(f"labels must be {n} values in {{0, 1}}")
    size = SIZE
    images = np.empty((n, size, size), np.uint8)
    lesion_masks = np.zeros((n, size, size), bool)
    marker_masks = np.zeros((n, size, size), bool)
    for i in range(n):
        # children 0-3 as before (a 5th child does not change the first four); 4: the random letter's coin
        a_rng, l_rng, m_rng, n_rng, c_rng = (
            np.random.default_rng(s) for s in np.random.SeedSequence([seed, i]).spawn(5)
        )
        anat = _anatomy(a_rng, size)
        img = anat.image.copy()
        les, les_mask = _lesion(l_rng, anat, size)  # drawn for every image: the anatomy and noise stay put
        if lab[i] == 1:
            img += les
            lesion_masks[i] = les_mask
        img = anat.gain * img + anat.offset + n_rng.normal(0, anat.noise, img.shape).astype(np.float32)
        if marker in ("label", "swapped"):
            letter = int(lab[i]) if marker == "label" else 1 - int(lab[i])
            marker_masks[i] = _paint_marker(img, letter, m_rng)
        elif marker == "random":
            marker_masks[i] = _paint_marker(img, int(c_rng.integers(0, 2)), m_rng)
        images[i] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return LesionBatch(images=images, labels=lab, lesion_masks=lesion_masks, marker_masks=marker_masks)


def to_tensor(images: np.ndarray, mean: float = MEAN, std: float = STD):
    """uint8 (n,H,W) -> normalised float32 torch tensor (n,1,H,W), as the registry's preprocessing
    (pixels / 255, then (x - mean) / std)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1).float().div_(255.0)
    return (x - mean) / std
