"""Maps to client formats: colour-mapped PNG (jet, as in the survey's figures),
overlay on the input image, grey-level mask, float32 array."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from schemas.api import ArrayOut

# 'jet' as MATLAB and matplotlib define it: piecewise-linear R, G, B through these knots
_JET_KNOTS = (
    ((0.0, 0.35, 0.66, 0.89, 1.0), (0.0, 0.0, 1.0, 1.0, 0.5)),
    ((0.0, 0.125, 0.375, 0.64, 0.91, 1.0), (0.0, 0.0, 1.0, 1.0, 0.0, 0.0)),
    ((0.0, 0.11, 0.34, 0.65, 1.0), (0.5, 1.0, 1.0, 0.0, 0.0)),
)


def _jet(v: np.ndarray) -> np.ndarray:
    return np.stack([np.interp(v, xs, ys) for xs, ys in _JET_KNOTS], axis=-1)


def _hot(v: np.ndarray) -> np.ndarray:
    return np.stack([np.clip(3 * v, 0, 1), np.clip(3 * v - 1, 0, 1), np.clip(3 * v - 2, 0, 1)], axis=-1)


def _gray(v: np.ndarray) -> np.ndarray:
    return np.stack([v, v, v], axis=-1)


def _viridis(v: np.ndarray) -> np.ndarray:
    # 5-point approximation of viridis, linearly interpolated
    pts = np.array(
        [
            [0.267, 0.005, 0.329],
            [0.230, 0.322, 0.546],
            [0.128, 0.567, 0.551],
            [0.369, 0.789, 0.383],
            [0.993, 0.906, 0.144],
        ]
    )
    x = np.linspace(0, 1, len(pts))
    return np.stack([np.interp(v, x, pts[:, i]) for i in range(3)], axis=-1)


COLORMAPS = {"jet": _jet, "hot": _hot, "gray": _gray, "viridis": _viridis}


def colorize(m: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) uint8."""
    rgb = COLORMAPS[colormap](np.clip(m, 0, 1))
    return (rgb * 255 + 0.5).astype(np.uint8)


def png_b64(arr: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return base64.b64encode(buf.getvalue()).decode()


def heatmap_png(m: np.ndarray, colormap: str = "jet") -> str:
    return png_b64(colorize(m, colormap))


def mask_png(m: np.ndarray) -> str:
    return png_b64((np.clip(m, 0, 1) * 255 + 0.5).astype(np.uint8))


def overlay_png(m: np.ndarray, image: Image.Image, colormap: str = "jet", alpha: float = 0.5) -> str:
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    heat = colorize(m, colormap).astype(np.float32)
    return png_b64(((1 - alpha) * base + alpha * heat + 0.5).clip(0, 255).astype(np.uint8))


def array_out(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a, dtype="<f4")
    return {"shape": list(a.shape), "dtype": "float32", "data": base64.b64encode(a.tobytes()).decode()}


def decode_array(a: ArrayOut | dict) -> np.ndarray:
    """The float32 array of an ``array`` output (the response model or its JSON)."""
    d = a.model_dump() if isinstance(a, ArrayOut) else a
    return np.frombuffer(base64.b64decode(d["data"]), dtype="<f4").reshape(d["shape"])
