"""Sanity check by cascading model-parameter randomisation (Adebayo, Gilmer, Muelly, Goodfellow,
Hardt, Kim, "Sanity checks for saliency maps", NeurIPS 2018, §3.1).

Starting from the top (logits) layer, the layers' parameters are re-initialised one after the
other (cascading: layer k stays randomised when layer k+1 is); after each, the method's map on
the randomised model is compared with the trained model's map. A method whose map stays similar
does not depend on what the model learned. As Quantus ``MPRT`` (0.6): the layers are the modules
that have ``reset_parameters`` in ``named_modules()`` order, reversed; before each layer's
re-initialisation ``torch.manual_seed(seed + 1)`` is called (inside a forked RNG here, so the
caller's RNG is untouched); similarities are Spearman's rank correlation of the absolute maps
(Adebayo et al. Fig. 2) and SSIM of the [0,1]-normalised absolute maps.

The loaded model is never modified: the randomisation acts on a ``copy.deepcopy`` of its module.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from workers.evaluation.common import MapFn, to_numpy, with_module
from workers.evaluation.metrics import minmax, spearman, ssim
from workers.explain.base import NO_PROGRESS, Progress
from workers.models.loading import LoadedModel


def randomisable_layers(module: torch.nn.Module) -> list[str]:
    """Names of the modules with parameters to re-initialise, top (output) first."""
    return [name for name, m in module.named_modules() if hasattr(m, "reset_parameters")][::-1]


def cascading_randomisation(
    model: LoadedModel,
    x: torch.Tensor,
    targets: torch.Tensor,
    fn: MapFn,
    maps: torch.Tensor | None = None,
    layers: int | None = None,
    seed: int = 42,
    progress: Progress = NO_PROGRESS,
) -> dict:
    """{"layers": [name, ...], "spearman": (L, N) array, "ssim": (L, N) array} for the top ``layers``
    layers (all by default); row k compares the trained map with the map after randomising the top
    k+1 layers."""
    if maps is None:
        maps = fn(model, x, targets)
    ref = np.abs(to_numpy(maps))
    net = copy.deepcopy(model.module)
    rand_model = with_module(model, net)
    names = randomisable_layers(net)[: layers or None]
    sp = np.full((len(names), x.shape[0]), np.nan)
    ss = np.full_like(sp, np.nan)
    for k, name in enumerate(names):
        progress(k / max(len(names), 1))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            net.get_submodule(name).reset_parameters()
        r = np.abs(to_numpy(fn(rand_model, x, targets)))
        for i in range(x.shape[0]):
            sp[k, i] = spearman(ref[i], r[i])
            ss[k, i] = ssim(minmax(ref[i]), minmax(r[i])) if ref[i].ndim == 2 else np.nan
    progress(1.0)
    return {"layers": names, "spearman": sp, "ssim": ss}


def model_randomisation(
    model: LoadedModel,
    x: torch.Tensor,
    targets: torch.Tensor,
    fn: MapFn,
    maps: torch.Tensor | None = None,
    layers: int | None = None,
    seed: int = 42,
    progress: Progress = NO_PROGRESS,
) -> list[dict[str, float]]:
    """Per sample {spearman, ssim (means over the cascade), spearman_last, ssim_last (all randomised)}."""
    r = cascading_randomisation(model, x, targets, fn, maps, layers, seed, progress)
    sp, ss = r["spearman"], r["ssim"]

    def mean(col):
        col = col[~np.isnan(col)]
        return float(col.mean()) if col.size else float("nan")

    return [
        {
            "spearman": mean(sp[:, i]),
            "ssim": mean(ss[:, i]),
            "spearman_last": float(sp[-1, i]),
            "ssim_last": float(ss[-1, i]),
        }
        for i in range(x.shape[0])
    ]
