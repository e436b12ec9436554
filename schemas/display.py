"""How a map is shown: the colour maps a request may name (matplotlib's) and the defaults.

Signed maps (relevance that can be negative: IG, LRP, DeepLIFT, occlusion, ...) default to
``abs_max`` and a diverging colour map centred on zero; unsigned maps to ``minmax`` and jet, the
colour map of the survey's figures (docs/architecture.md)."""

from __future__ import annotations

from functools import cache

UNSIGNED_COLORMAP = "jet"
SIGNED_COLORMAP = "bwr"
UNSIGNED_NORMALIZE = "minmax"
SIGNED_NORMALIZE = "abs_max"


@cache
def colormap_names() -> frozenset[str]:
    """Every colour map matplotlib registers (its ``_r`` reversed twins included)."""
    from matplotlib import colormaps  # the gateway imports it only to validate a name

    return frozenset(colormaps)


def check_colormap(name: str) -> str:
    if name not in colormap_names():
        raise ValueError(f"unknown colormap {name!r}; any matplotlib colour map name (e.g. jet, viridis, bwr, RdBu_r)")
    return name
