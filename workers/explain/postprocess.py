"""From a method's raw relevance to the client's map: reduce over channels,
resize to the client's image size, normalise (see docs/architecture.md)."""

from __future__ import annotations

import math

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


def display_map(m: torch.Tensor, how: str, signed: bool) -> tuple[torch.Tensor, float, float]:
    """A map as reduced and resized (C, H, W), before normalisation -> ``(d, lo, hi)``: ``d`` (H, W) in
    [0, 1], the colour-map coordinate, and the map values that ``d = 0`` and ``d = 1`` stand for (the
    colour bar's ends). Linear in the map, as the normalisation is:

    - ``minmax``: the map's minimum at 0, its maximum at 1 (the survey's pictures);
    - a signed map under ``abs_max`` or ``none``: centred, -max|m| at 0, zero at 0.5 (a diverging colour
      map's centre colour), +max|m| at 1;
    - an unsigned map: ``abs_max`` puts 0 at 0 and max|m| at 1; ``none`` is drawn min-max;
    - several channels (``reduce: none``): their largest magnitude per pixel, drawn min-max.
    A constant map is drawn at 0 (signed: at 0.5)."""
    if m.shape[0] > 1:
        m, how, signed = m.abs().amax(dim=0, keepdim=True), "minmax", False
    m = m[0]
    if how == "minmax" or (how == "none" and not signed):
        lo, hi = m.min(), m.max()
        d = ((m - lo) / (hi - lo)).clamp(0, 1) if hi > lo else torch.zeros_like(m)
        return d, float(lo), float(hi)
    s = m.abs().max()
    if signed:
        d = ((m / s + 1) / 2).clamp(0, 1) if s > 0 else torch.full_like(m, 0.5)
        return d, -float(s), float(s)
    d = (m / s).clamp(0, 1) if s > 0 else torch.zeros_like(m)
    return d, 0.0, float(s)


def kept(m: torch.Tensor, percent: float) -> torch.Tensor:
    """(C, H, W) map -> (H, W) bool: the pixels holding the top ``percent`` % of the map by |value|
    (largest magnitude over channels), ties at the cut kept, zero relevance never."""
    mag = m.abs().amax(dim=0).flatten()
    k = max(1, math.ceil(percent / 100 * mag.numel()))
    cut = torch.topk(mag, k).values[-1]
    return ((mag >= cut) & (mag > 0)).reshape(m.shape[1:])
