"""Which images the service accepts, and their safe decoding (gateway and worker).

PNG or JPEG only; the pixel count is checked from the header before any
decoding (decompression bombs), and the whole file is decoded so that a
truncated image is rejected at the door."""

from __future__ import annotations

import base64
import binascii
import io
import warnings

from PIL import Image

from schemas.problems import ImageProblem

FORMATS = ("PNG", "JPEG")


def b64_to_bytes(data: str) -> bytes:
    s = data.split(",", 1)[1] if data.startswith("data:") else data
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ImageProblem("image is not valid base64", field="image") from e


def decode_image(data: bytes | str, max_pixels: int) -> Image.Image:
    """Base64 text or raw bytes -> fully loaded PIL image."""
    if isinstance(data, str):
        data = b64_to_bytes(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.format not in FORMATS:
                raise ImageProblem(f"unsupported image format {img.format}; send PNG or JPEG", field="image")
            w, h = img.size
            if w * h > max_pixels:
                raise ImageProblem(
                    f"image of {w}x{h} = {w * h} pixels is over the limit of {max_pixels}", field="image"
                )
            img.load()
    except ImageProblem:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageProblem(f"image rejected as a decompression bomb: {e}", field="image") from e
    except Exception as e:  # PIL raises many types for corrupt data
        raise ImageProblem(f"image could not be decoded: {e}", field="image") from e
    return img if img.mode in ("RGB", "L") else img.convert("RGB")
