"""Which images the service accepts, and their safe decoding (gateway and worker).

PNG or JPEG only; the pixel count is checked from the header before any
decoding (decompression bombs), and the whole file is decoded so that a
truncated image is rejected at the door."""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from dataclasses import dataclass

from PIL import Image

from schemas.api import ImageInfo
from schemas.problems import ImageProblem

FORMATS = ("PNG", "JPEG")


def b64_to_bytes(data: str) -> bytes:
    s = data.split(",", 1)[1] if data.startswith("data:") else data
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ImageProblem("image is not valid base64", field="image") from e


def open_checked(data: bytes, max_pixels: int) -> Image.Image:
    """The image opened from its header only: PNG or JPEG, at most ``max_pixels`` (nothing decoded yet)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the exact check follows
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ImageProblem(
            f"image rejected: its header declares over twice {Image.MAX_IMAGE_PIXELS} pixels (a decompression "
            f"bomb), over the limit of {max_pixels}",
            field="image",
        ) from e
    except Exception as e:  # PIL raises many types (with internal text) for what it cannot identify
        raise ImageProblem("image is not a PNG or JPEG file", field="image") from e
    if img.format not in FORMATS:
        raise ImageProblem(f"unsupported image format {img.format}; send PNG or JPEG", field="image")
    w, h = img.size
    if w * h > max_pixels:
        raise ImageProblem(f"image of {w}x{h} = {w * h} pixels is over the limit of {max_pixels}", field="image")
    return img


def _pixel_limit(w: int, h: int, max_pixels: int) -> None:
    if w * h > max_pixels:
        raise ImageProblem(f"image of {w}x{h} = {w * h} pixels is over the limit of {max_pixels}", field="image")


def image_size(data: bytes | str, max_pixels: int) -> tuple[int, int]:
    """(width, height) from the header, checked as :func:`decode` checks it, without decoding."""
    raw = b64_to_bytes(data) if isinstance(data, str) else data
    from common import dicom  # lazily: common.dicom imports this module

    if dicom.is_dicom(raw):
        w, h = dicom.dicom_size(raw)
        _pixel_limit(w, h, max_pixels)
        return w, h
    return open_checked(raw, max_pixels).size


def decode_image(data: bytes | str, max_pixels: int) -> Image.Image:
    """Base64 text or raw bytes -> fully loaded PIL image (the pixel limit checked from the header first).
    Errors are fixed sentences: no decoder text, which can carry object addresses."""
    if isinstance(data, str):
        data = b64_to_bytes(data)
    img = open_checked(data, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
    except Exception as e:  # truncated or corrupt data
        raise ImageProblem(f"{img.format} image could not be decoded (truncated or corrupt)", field="image") from e
    return img if img.mode in ("RGB", "L") else img.convert("RGB")


@dataclass
class Decoded:
    """An image as the service reads it.

    ``image`` is mode ``L`` or ``RGB`` (8-bit files), or ``F`` holding grey levels in [0, 255] after
    the window (high-bit-depth grey and DICOM), so ``/ 255`` puts every kind on the same scale;
    ``info`` says what was read and applied (the response's ``image``); ``payload`` is what the job
    carries to the worker instead of the bytes sent, where they differ (DICOM: the file without its
    patient data), else None."""

    image: Image.Image
    info: ImageInfo
    payload: bytes | None = None


def decode(
    data: bytes | str, max_pixels: int, window: tuple[float, float] | None = None, frame: int | None = None
) -> Decoded:
    """Base64 text or raw bytes -> :class:`Decoded` (pixel limit from the header first; errors are
    fixed sentences naming the mode or format, no decoder text). ``window`` (centre, width) overrides the
    file's own; ``frame`` picks one frame of a multi-frame file."""
    raw = b64_to_bytes(data) if isinstance(data, str) else data
    from common import dicom  # lazily: common.dicom imports this module

    if dicom.is_dicom(raw):
        return dicom.decode_dicom(raw, max_pixels, window, frame)
    img = decode_image(raw, max_pixels)
    w, h = img.size
    info = ImageInfo(format=img.format or "PNG", mode=img.mode, width=w, height=h, bits=8)
    return Decoded(image=img, info=info)
