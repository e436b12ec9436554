"""Which images the service accepts, and their safe decoding (gateway and worker).

PNG, JPEG, TIFF, GIF, BMP, WEBP and DICOM (common/dicom.py); every pixel mode decodes to the right numbers
(8-bit L / RGB, or mode F levels after a window for high-bit-depth grey) or is refused naming it
(docs/images.md). The pixel count is checked from the header before any decoding (decompression
bombs), and the whole file is decoded so that a truncated image is rejected at the door."""

from __future__ import annotations

import base64
import binascii
import io
import warnings

import numpy as np
from PIL import Image, ImageOps

from common import dicom
from common.decoded import Decoded
from common.window import Window
from schemas.api import AppliedWindow, ImageInfo
from schemas.problems import ImageProblem

FORMATS = ("PNG", "JPEG", "MPO", "TIFF", "GIF", "BMP", "WEBP")  # MPO: a camera's JPEG with its preview images
HIGH_BIT_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
EXIF_ORIENTATION = 0x0112


def b64_to_bytes(data: str) -> bytes:
    s = data.split(",", 1)[1] if data.startswith("data:") else data
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ImageProblem("image is not valid base64", field="image") from e


def open_checked(data: bytes, max_pixels: int) -> Image.Image:
    """The image opened from its header only: one of :data:`FORMATS`, at most ``max_pixels`` (nothing
    decoded yet)."""
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
        raise ImageProblem("image is not a PNG, JPEG, TIFF, GIF, BMP, WEBP or DICOM file", field="image") from e
    if img.format not in FORMATS:
        raise ImageProblem(
            f"unsupported image format {img.format}; send PNG, JPEG, TIFF, GIF, BMP, WEBP or DICOM", field="image"
        )
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
    if dicom.is_dicom(raw):
        w, h = dicom.dicom_size(raw)
        _pixel_limit(w, h, max_pixels)
        return w, h
    return open_checked(raw, max_pixels).size


def decode_image(data: bytes | str, max_pixels: int) -> Image.Image:
    """The pixels of an image sent as a mask, a map or a baseline (no window or frame to choose):
    :func:`decode`'s image, mode ``L``, ``RGB`` or ``F`` (levels in [0, 255])."""
    return decode(data, max_pixels).image


def grey_levels(img: Image.Image) -> np.ndarray:
    """A decoded image's grey levels in [0, 255] as float64 (mode F as it is, 8-bit through ``L``)."""
    if img.mode == "F":
        return np.asarray(img, dtype=np.float64)
    return np.asarray(img.convert("L"), dtype=np.float64)


def decode(
    data: bytes | str, max_pixels: int, window: tuple[float, float] | None = None, frame: int | None = None
) -> Decoded:
    """Base64 text or raw bytes -> :class:`Decoded` (pixel limit from the header first; errors are
    fixed sentences naming the mode or format, no decoder text). ``window`` (centre, width) overrides the
    file's own; ``frame`` picks one frame of a multi-frame file (docs/images.md)."""
    raw = b64_to_bytes(data) if isinstance(data, str) else data
    if dicom.is_dicom(raw):
        return dicom.decode_dicom(raw, max_pixels, window, frame)
    img = open_checked(raw, max_pixels)
    fmt = "JPEG" if img.format == "MPO" else str(img.format)
    frames = 1 if img.format == "MPO" else int(getattr(img, "n_frames", 1))  # MPO: a photo and its previews
    index = _frame_index(frame, frames)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if index:
                img.seek(index)
            _pixel_limit(*img.size, max_pixels)  # a later frame of a TIFF can be larger
            img.load()
    except ImageProblem:
        raise
    except Exception as e:  # truncated or corrupt data
        raise ImageProblem(f"{fmt} image could not be decoded (truncated or corrupt)", field="image") from e
    mode = img.mode
    orientation = _orientation(img)
    if orientation is not None:
        img = ImageOps.exif_transpose(img)
    pixels, bits, applied = _pixels(img, mode, window)
    w, h = pixels.size
    info = ImageInfo(
        format=fmt,
        mode=mode,
        width=w,
        height=h,
        bits=bits,
        orientation=orientation,
        frame=frame,
        frames=frames,
        window=applied,
    )
    return Decoded(image=pixels, info=info)


def _frame_index(frame: int | None, frames: int) -> int:
    if frame is None:
        if frames > 1:
            raise ImageProblem(
                f"image has {frames} frames (animated or multi-page): choose one with the field frame "
                f"(0 to {frames - 1})",
                field="frame",
            )
        return 0
    if not 0 <= frame < frames:
        raise ImageProblem(
            f"frame {frame} is out of range: the image has {frames} frame(s) (0 to {frames - 1})", field="frame"
        )
    return frame


def _orientation(img: Image.Image) -> int | None:
    """The EXIF orientation (2-8) that :func:`ImageOps.exif_transpose` undoes; None for 1 or none."""
    try:
        o = img.getexif().get(EXIF_ORIENTATION)
    except Exception:  # an unreadable EXIF block is not the pixels' problem
        return None
    return int(o) if isinstance(o, int) and 2 <= o <= 8 else None


def _over_black(a: np.ndarray) -> np.ndarray:
    """(H, W, C + 1) uint8 with alpha last -> (H, W, C) uint8 composited over black."""
    colour, alpha = a[..., :-1].astype(np.float64), a[..., -1:].astype(np.float64)
    return np.round(colour * alpha / 255.0).astype(np.uint8)


def _pixels(
    img: Image.Image, mode: str, window: tuple[float, float] | None
) -> tuple[Image.Image, int, AppliedWindow | None]:
    """The decoded image -> (mode L / RGB / F image, bits per sample, the window applied)."""
    if window is not None and mode not in HIGH_BIT_GREY:
        raise ImageProblem(
            f"window_center / window_width apply to high-bit-depth grey and DICOM, not to a mode {mode} image",
            field="window_center",
        )
    if mode in ("L", "RGB"):
        return img, 8, None
    if mode in ("1", "CMYK", "YCbCr", "RGBX"):
        return img.convert("L" if mode == "1" else "RGB"), 1 if mode == "1" else 8, None
    if mode == "LA":
        return Image.fromarray(_over_black(np.asarray(img))[..., 0], mode="L"), 8, None
    if mode == "RGBA":
        return Image.fromarray(_over_black(np.asarray(img)), mode="RGB"), 8, None
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in img.info
        rgb = img.convert("RGBA" if has_alpha else "RGB")
        return (Image.fromarray(_over_black(np.asarray(rgb)), mode="RGB") if has_alpha else rgb), 8, None
    if mode in HIGH_BIT_GREY:
        return _windowed(img, mode, window)
    raise ImageProblem(
        f"unsupported image mode {mode}: send grey (1, L, I;16, I, F), grey+alpha (LA), RGB(A), palette (P) or CMYK",
        field="image",
    )


def _windowed(
    img: Image.Image, mode: str, window: tuple[float, float] | None
) -> tuple[Image.Image, int, AppliedWindow]:
    """High-bit-depth grey through a window (the request's, else the full range) -> mode F in [0, 255].
    The full range of 16-bit data is 0..65535 (an 8-bit level k stored as k * 257 gives k back); of
    32-bit integers and floats, which declare no range, the image's own minimum..maximum."""
    vals = np.asarray(img)
    if vals.dtype.kind == "f" and not np.isfinite(vals).all():
        raise ImageProblem(f"mode {mode} image holds NaN or infinite values", field="image")
    sixteen = mode.startswith("I;16") or (mode == "I" and img.format == "PNG")  # PNG stores at most 16 bits
    if window is not None:
        w = Window(*window)
        applied = AppliedWindow(center=w.center, width=w.width, source="request")
    else:
        lo, hi = (0.0, 65535.0) if sixteen else (float(vals.min()), float(vals.max()))
        w = Window.full_range(lo, hi) if hi > lo else Window.full_range(lo, lo + 1)
        applied = AppliedWindow(center=w.center, width=w.width, source="full_range")
    y = np.ascontiguousarray(w.apply(vals), dtype=np.float32)
    return Image.fromarray(y, mode="F"), 16 if sixteen else 32, applied
