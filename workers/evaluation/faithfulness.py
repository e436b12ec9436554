"""Faithfulness: does removing what the map calls relevant change the model's output?

- :func:`deletion_insertion` — Petsiuk, Das, Saenko, "RISE: Randomized input sampling for
  explanation of black-box models", BMVC 2018, §4.1: pixels are removed from (deletion) or
  inserted into (insertion) the image in decreasing order of relevance, in ``steps`` equal
  steps; the target's score (softmax probability by default) is recorded after each step and
  the area under that curve over the removed/inserted fraction [0, 1] (trapezoid rule) is the
  metric. A removed pixel takes the value of a constant image or of a Gaussian-blurred copy
  (:func:`workers.explain.baselines.baseline`; RISE: deletion to a constant, insertion into
  a blurred canvas). All channels of a pixel move
  together; the perturbed images go through the network in batches.
- :func:`faithfulness_correlation` — Bhatt, Weller, Moura, "Evaluating and aggregating
  feature-based model explanations", IJCAI 2020, §3.2: for ``runs`` random subsets S of
  ``subset_size`` input elements, the Pearson correlation between sum_{i in S} a_i and
  f_t(x) - f_t(x with S replaced by a baseline). As Quantus ``FaithfulnessCorrelation``: the
  map is broadcast over the channels, elements are (channel, pixel) entries, f_t is the target's
  logit, subsets are drawn by ``numpy.random.RandomState(seed).choice(n, k, replace=False)``
  run by run, sample by sample — so the same seed gives Quantus' draws.
"""

from __future__ import annotations

import numpy as np
import torch

from workers.evaluation.common import scores
from workers.evaluation.metrics import cc
from workers.explain.base import NO_PROGRESS, Progress
from workers.explain.baselines import baseline
from workers.models.loading import LoadedModel


def curve_auc(curve: np.ndarray) -> float:
    """Trapezoid area of a curve sampled at equally spaced fractions 0, 1/s, ..., 1."""
    c = np.asarray(curve, dtype=np.float64)
    return float(np.trapezoid(c, dx=1.0 / (len(c) - 1)))


def step_counts(n_pixels: int, steps: int) -> np.ndarray:
    """Number of pixels changed after each of the ``steps`` steps (0 first, all last)."""
    return np.rint(np.linspace(0, n_pixels, steps + 1)).astype(np.int64)


def deletion_insertion(
    model: LoadedModel,
    x: torch.Tensor,
    target: int,
    relevance: torch.Tensor,
    *,
    mode: str = "deletion",
    fill: str = "constant",
    value: float = 0.0,
    sigma: float = 5.0,
    steps: int = 32,
    score: str = "probability",
    batch_size: int = 33,
    progress: Progress = NO_PROGRESS,
) -> tuple[float, np.ndarray]:
    """(AUC, curve) for one image ``x`` (1, C, H, W) and its map ``relevance`` (H, W).

    Pixels are ranked by decreasing relevance (ties by position); after step i the top
    ``step_counts(H*W, steps)[i]`` pixels are removed (deletion: x -> fill) or inserted
    (insertion: fill -> x)."""
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be deletion or insertion, not {mode!r}")
    _, c, h, w = x.shape
    order = torch.from_numpy(np.argsort(-relevance.detach().cpu().double().numpy().ravel(), kind="stable"))
    counts = step_counts(h * w, steps)
    other = baseline(model, x, "blur", blur_sigma=sigma) if fill == "blur" else baseline(model, x, float(value))
    start, end = (x, other) if mode == "deletion" else (other, x)
    start_f, end_f = start.reshape(1, c, h * w), end.reshape(1, c, h * w)
    rank = torch.empty(h * w, dtype=torch.long)
    rank[order] = torch.arange(h * w)
    t = torch.tensor([target])
    out = []
    for s in range(0, steps + 1, batch_size):
        k = torch.from_numpy(counts[s : s + batch_size])
        changed = (rank.view(1, -1) < k.view(-1, 1)).to(x.device)  # (B, HW)
        imgs = torch.where(changed[:, None, :], end_f, start_f).reshape(-1, c, h, w)
        out.append(scores(model, imgs, t.expand(imgs.shape[0]), score, batch_size=batch_size))
        progress(min(s + batch_size, steps + 1) / (steps + 1))
    curve = torch.cat(out).double().numpy()
    return curve_auc(curve), curve


def faithfulness_correlation(
    model: LoadedModel,
    x: torch.Tensor,
    targets: torch.Tensor,
    relevance: torch.Tensor,
    *,
    runs: int = 100,
    subset_size: int = 224,
    value: float | torch.Tensor = 0.0,
    seed: int = 0,
    batch_size: int = 50,
    progress: Progress = NO_PROGRESS,
) -> np.ndarray:
    """Per-sample faithfulness correlation for a batch x (N, C, H, W) with maps (N, H, W) or (N, C', H, W).

    ``value``: the baseline as a [0,1] pixel intensity (converted to the normalised input per
    channel), or a tensor broadcastable to x holding normalised input values directly."""
    n, c, h, w = x.shape
    a = relevance.detach().double().cpu()
    if a.dim() == 3:
        a = a[:, None]
    a = a.expand(n, c, h, w).reshape(n, -1).numpy()
    nf = c * h * w
    if subset_size > nf:
        raise ValueError(f"subset_size {subset_size} exceeds the {nf} input elements")
    base = value if isinstance(value, torch.Tensor) else baseline(model, x, float(value))
    base_f = base.to(x.dtype).to(x.device).expand(n, c, h, w).reshape(n, -1)
    xf = x.detach().reshape(n, -1)
    y0 = scores(model, x, targets).double().numpy()
    rs = np.random.RandomState(seed)
    idx = np.stack([np.stack([rs.choice(nf, subset_size, replace=False) for _ in range(n)]) for _ in range(runs)])
    att_sums = np.take_along_axis(a[None].repeat(runs, 0), idx, axis=2).sum(-1)  # (runs, n)
    deltas = np.empty((runs, n))
    rows = torch.arange(n).view(-1, 1)
    for s in range(0, runs, max(1, batch_size // n)):
        e = min(runs, s + max(1, batch_size // n))
        imgs = []
        for r in range(s, e):
            xp = xf.clone()
            ii = torch.from_numpy(idx[r]).to(x.device)
            xp[rows, ii] = base_f[rows, ii]
            imgs.append(xp.reshape(n, c, h, w))
        y = scores(model, torch.cat(imgs), targets.repeat(e - s)).double().numpy().reshape(e - s, n)
        deltas[s:e] = y0[None] - y
        progress(e / runs)
    return np.array([cc(att_sums[:, i], deltas[:, i]) for i in range(n)])
