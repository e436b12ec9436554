"""Maps to client formats: colour-mapped PNG (any matplotlib colour map; jet, as in the survey's
figures, for unsigned maps and a diverging one for signed maps: schemas/display.py), overlay on the
input image, grey-level or thresholded mask, float32 array; the options of docs/architecture.md
("Pictures"): a colour bar with the raw value range, overlay opacity, a top-p % threshold and the
kept region's contour.

The pictures take ``d``, the colour-map coordinate in [0, 1] that
``workers.explain.postprocess.display_map`` computes, and ``keep``, the thresholded pixels (or None)."""

from __future__ import annotations

import base64
import io
from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from schemas.api import ArrayOut

CONTOUR_RGB = (0, 255, 0)  # the kept region's outline on overlay_png: green, in neither jet's nor bwr's ends
BAR_GAP, BAR_BACKGROUND = 3, (255, 255, 255)


@cache
def lut(colormap: str) -> tuple[np.ndarray, int]:
    """matplotlib's look-up table of ``colormap`` as uint8 RGB (N, 3), and N."""
    from matplotlib import colormaps  # the worker's import, once per name

    cmap = colormaps[colormap]
    table = cmap(np.arange(cmap.N))[:, :3]
    return (table * 255 + 0.5).astype(np.uint8), cmap.N


def colorize(d: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) uint8, picked from the look-up table as matplotlib picks it
    (entry floor(d * N), the top clipped to N - 1): matplotlib's colour rounded to uint8."""
    table, n = lut(colormap)
    idx = np.clip((np.clip(d, 0, 1) * n).astype(np.int64), 0, n - 1)
    return table[idx]


def centre_colour(colormap: str) -> np.ndarray:
    """The colour zero relevance of a signed map is drawn in (``d = 0.5``)."""
    return colorize(np.array([[0.5]]), colormap)[0, 0]


def png_b64(arr: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return base64.b64encode(buf.getvalue()).decode()


def heatmap(d: np.ndarray, colormap: str, keep: np.ndarray | None = None, zero: float = 0.0) -> np.ndarray:
    """The coloured map; pixels outside ``keep`` are drawn as zero relevance (``d = zero``)."""
    return colorize(d if keep is None else np.where(keep, d, zero), colormap)


def base_rgb(image: Image.Image) -> np.ndarray:
    """The client's image as (H, W, 3) uint8 to draw on: a mode ``F`` image (high-bit-depth grey after
    its window, levels in [0, 255]) rounded to 8 bits, not clipped white by Pillow's conversion."""
    if image.mode == "F":
        g = np.clip(np.asarray(image, dtype=np.float32) + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"))


def contour(keep: np.ndarray) -> np.ndarray:
    """The kept pixels with a 4-neighbour outside the region (or on the image border)."""
    p = np.pad(keep, 1, constant_values=False)
    inner = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return keep & ~inner


def overlay(
    d: np.ndarray,
    image: Image.Image,
    colormap: str,
    opacity: float = 0.5,
    keep: np.ndarray | None = None,
    outline: bool = False,
) -> np.ndarray:
    """The heatmap blended over the image with weight ``opacity``; outside ``keep`` the image alone,
    and the region's outline in CONTOUR_RGB when ``outline``."""
    base = base_rgb(image).astype(np.float32)
    alpha = np.full(d.shape + (1,), opacity, np.float32)
    if keep is not None:
        alpha[~keep] = 0.0
    out = ((1 - alpha) * base + alpha * colorize(d, colormap) + 0.5).clip(0, 255).astype(np.uint8)
    if outline and keep is not None:
        out[contour(keep)] = CONTOUR_RGB
    return out


def mask(d: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """Grey levels of ``d``; with a threshold the kept region itself (255 in it, 0 outside)."""
    if keep is not None:
        return np.where(keep, 255, 0).astype(np.uint8)
    return (np.clip(d, 0, 1) * 255 + 0.5).astype(np.uint8)


def _label(v: float) -> str:
    return "0" if v == 0 else f"{v:.3g}"


def with_colorbar(rgb: np.ndarray, colormap: str, lo: float, hi: float) -> np.ndarray:
    """``rgb`` with a colour bar to its right: the colour map from ``hi`` (top) to ``lo`` (bottom), the
    map values its colours stand for, labelled at both ends and at 0 where the range spans it."""
    h, w = rgb.shape[:2]
    bar_w = max(6, w // 16)
    font = ImageFont.load_default()
    labels = [(0, _label(hi)), (h - 1, _label(lo))]
    if lo < 0 < hi:
        labels.append((round((h - 1) * hi / (hi - lo)), "0"))
    text_w = max(int(np.ceil(font.getlength(t))) for _, t in labels) + 2
    canvas = Image.new("RGB", (w + BAR_GAP + bar_w + BAR_GAP + text_w, h), BAR_BACKGROUND)
    canvas.paste(Image.fromarray(rgb), (0, 0))
    ramp = np.linspace(1.0, 0.0, h)[:, None].repeat(bar_w, axis=1)
    canvas.paste(Image.fromarray(colorize(ramp, colormap)), (w + BAR_GAP, 0))
    draw = ImageDraw.Draw(canvas)
    x = w + 2 * BAR_GAP + bar_w
    for y, t in labels:
        _, top, _, bottom = draw.textbbox((0, 0), t, font=font)
        ty = min(max(0, y - (bottom + top) // 2), max(0, h - bottom))
        draw.text((x, ty), t, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def array_out(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a, dtype="<f4")
    return {"shape": list(a.shape), "dtype": "float32", "data": base64.b64encode(a.tobytes()).decode()}


def decode_array(a: ArrayOut | dict) -> np.ndarray:
    """The float32 array of an ``array`` output (the response model or its JSON)."""
    d = a.model_dump() if isinstance(a, ArrayOut) else a
    return np.frombuffer(base64.b64decode(d["data"]), dtype="<f4").reshape(d["shape"])
