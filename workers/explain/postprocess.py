"""From a method's raw relevance to the client's map: reduce over channels,
resize to the client's image size, normalise (see docs/architecture.md)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reduce_channels(a: torch.Tensor, how: str) -> torch.Tensor:
    """(N, C, H, W) -> (N, 1, H, W), or unchanged for ``none`` and one-channel maps."""
    if how == "none" or a.shape[1] == 1:
        return a
    if how == "max_abs":  # Eq. 6
        return a.abs().amax(dim=1, keepdim=True)
    if how == "sum":
        return a.sum(dim=1, keepdim=True)
    if how == "abs_sum":
        return a.abs().sum(dim=1, keepdim=True)
    if how == "mean":
        return a.mean(dim=1, keepdim=True)
    raise ValueError(f"unknown reduce {how!r}")


def resize(a: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    if tuple(a.shape[-2:]) == tuple(size_hw):
        return a
    return F.interpolate(a, size=size_hw, mode="bilinear", align_corners=False)


def normalize(m: torch.Tensor, how: str) -> torch.Tensor:
    """One sample's map (C, H, W) normalised as a whole."""
    if how == "none":
        return m
    if how == "minmax":
        lo, hi = m.min(), m.max()
        return (m - lo) / (hi - lo) if hi > lo else torch.zeros_like(m)
    if how == "abs_max":
        s = m.abs().max()
        return m / s if s > 0 else torch.zeros_like(m)
    raise ValueError(f"unknown normalize {how!r}")


def display_map(m: torch.Tensor, how: str) -> torch.Tensor:
    """(C, H, W) normalised map -> (H, W) in [0, 1] for colouring."""
    if m.shape[0] > 1:
        m = m.abs().amax(dim=0, keepdim=True)
        how = "none_abs"
    m = m[0]
    if how == "minmax":
        return m.clamp(0, 1)
    if how == "abs_max":
        return ((m + 1) / 2).clamp(0, 1)
    lo, hi = m.min(), m.max()
    return (m - lo) / (hi - lo) if hi > lo else torch.zeros_like(m)
