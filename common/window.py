"""The grey-level window (centre / width) that maps high-bit-depth grey values to display levels.

One formula for every source: DICOM's linear VOI function (PS3.3 C.11.2.1.2.1) applied to the
values after the modality LUT, or to the raw values of a 16/32-bit PNG or TIFF. The output is float
in [0, 255], the scale of an 8-bit image, so that the model's normalisation (``/ 255``) reads both the
same way: an 8-bit value k stored as 16 bits (k * 257) under the full-range window is k again."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    center: float
    width: float  # >= 1 (DICOM); the request schema enforces it

    @classmethod
    def full_range(cls, lo: float, hi: float) -> Window:
        """The window that maps ``lo`` to 0 and ``hi`` to 255 linearly (``hi > lo``)."""
        width = hi - lo + 1
        return cls(center=lo + width / 2, width=width)

    def apply(self, values: np.ndarray) -> np.ndarray:
        """``values`` (any shape) -> float32 in [0, 255]."""
        c, w = float(self.center), float(self.width)
        if w <= 1:  # a one-level window is a threshold (PS3.3: x <= c - 0.5 is the minimum)
            return np.where(np.asarray(values, np.float64) > c - 0.5, 255.0, 0.0).astype(np.float32)
        y = ((np.asarray(values, dtype=np.float64) - (c - 0.5)) / (w - 1) + 0.5) * 255.0
        return np.clip(y, 0.0, 255.0).astype(np.float32)
