"""What a decoder hands on: the pixels, what was read and applied, and what the job carries
(``common.images.decode`` for every format; ``common.dicom`` for DICOM)."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from schemas.api import ImageInfo


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
