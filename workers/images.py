"""Decoding client images safely (shared by the worker and the CLI)."""
from __future__ import annotations

import base64
import binascii
import io
import warnings

from PIL import Image

from workers.errors import ExplainError


class ImageError(ExplainError):
    status = 422
    title = "Invalid image"
    type = "https://whitebox.dev/problems/invalid-image"


def decode_image(data: bytes | str, max_pixels: int) -> Image.Image:
    """Base64 text or raw bytes -> fully loaded PIL image; rejects non-images, truncated
    files and images over ``max_pixels`` (checked from the header, before decoding)."""
    if isinstance(data, str):
        s = data.split(",", 1)[1] if data.startswith("data:") else data
        try:
            data = base64.b64decode(s, validate=True)
        except (binascii.Error, ValueError):
            raise ImageError("image is not valid base64", field="image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.format not in ("PNG", "JPEG"):
                raise ImageError(f"unsupported image format {img.format}; send PNG or JPEG", field="image")
            w, h = img.size
            if w * h > max_pixels:
                raise ImageError(f"image of {w}x{h} = {w * h} pixels is over the limit of {max_pixels}", field="image")
            img.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"image rejected as a decompression bomb: {e}", field="image")
    except Exception as e:  # PIL raises many types for corrupt data
        raise ImageError(f"image could not be decoded: {e}", field="image")
    return img
