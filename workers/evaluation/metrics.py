"""Map-vs-map, map-vs-ground-truth and complexity metrics: pure numpy on one map.

Every function takes one sample's map (any shape, usually H x W; float) and a
reference map or boolean ground-truth mask of the same shape, and returns a
Python float (NaN where the metric is undefined, e.g. an empty mask). Arrays
are promoted to float64. Definitions follow the cited papers; where the
reference code (the MIT saliency benchmark's MATLAB code for Bylinskii et
al., Quantus 0.6 for the localisation metrics) fixes a detail the paper leaves
open, the detail is named in the docstring.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.stats import rankdata

EPS_MATLAB = np.finfo(np.float64).eps  # 2.2204e-16, the `eps` of the MIT benchmark code


def _f(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def minmax(a) -> np.ndarray:
    """Rescale to [0, 1] (MATLAB ``mat2gray``); a constant map becomes zeros."""
    a = _f(a)
    lo, hi = a.min(), a.max()
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def fixations(ref, quantile: float = 0.9) -> np.ndarray:
    """The 'fixation map' of a reference: a binary reference (at most two distinct values) is its
    larger-valued pixels; a continuous one is the pixels at or above its ``quantile``."""
    ref = _f(ref)
    vals = np.unique(ref)
    if vals.size <= 2:
        return ref > vals.min() if vals.size == 2 else np.zeros(ref.shape, bool)
    return ref >= np.quantile(ref, quantile)


def binarise(a, quantile: float) -> np.ndarray:
    """Pixels at or above the map's own ``quantile`` (numpy's linear quantile)."""
    a = _f(a)
    return a >= np.quantile(a, quantile)


# ---- map vs map (Bylinskii et al. 2019) ------------------------------------------------------
def cc(a, b) -> float:
    """Pearson's linear correlation coefficient (Bylinskii et al. 2019, §3.2.1):
    cov(P, Q) / (sigma(P) sigma(Q)) of the two maps as flat vectors. NaN if one map is constant."""
    a, b = _f(a).ravel(), _f(b).ravel()
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def sim(a, b) -> float:
    """Similarity / histogram intersection (Bylinskii et al. 2019, §3.2.2; Swain & Ballard 1991):
    sum_i min(P_i, Q_i), each map first min-max normalised to [0, 1] then divided by its sum
    (as the MIT benchmark's ``similarity.m``). 1 for identical distributions, 0 for disjoint ones."""
    p, q = minmax(a), minmax(b)
    sp, sq = p.sum(), q.sum()
    if sp == 0 or sq == 0:
        return float("nan")
    return float(np.minimum(p / sp, q / sq).sum())


def kl(a, b) -> float:
    """Kullback-Leibler divergence KL(Q || P) of the reference Q = ``b`` from the map P = ``a``
    (Bylinskii et al. 2019, §3.2.4; MIT ``KLdiv.m``): both divided by their sums, then
    sum_i Q_i log(eps + Q_i / (P_i + eps)) with eps = 2.2204e-16. Maps must be non-negative."""
    p, q = _f(a), _f(b)
    if p.min() < 0 or q.min() < 0:
        raise ValueError("kl needs non-negative maps (min-max normalise signed maps first)")
    sp, sq = p.sum(), q.sum()
    if sp == 0 or sq == 0:
        return float("nan")
    p, q = p / sp, q / sq
    return float((q * np.log(EPS_MATLAB + q / (p + EPS_MATLAB))).sum())


def auc_judd(a, fix) -> float:
    """AUC-Judd (Bylinskii et al. 2019, §3.1.1; Judd et al. 2009; MIT ``AUC_Judd.m``): the map is
    min-max normalised; the values at the fixated pixels are the thresholds (descending); at each
    threshold TP = share of fixations >= it and FP = share of the other pixels >= it; the curve runs
    from (0, 0) to (1, 1) and its area is taken with the trapezoid rule. Without ties this is the
    MATLAB code's TP = i / N_fix, FP = (#pixels >= threshold - i) / (N_pixels - N_fix); with tied values
    (e.g. the zeros of a ReLU map) each distinct threshold is one ROC point, where the MATLAB code adds
    a random jitter instead."""
    s = minmax(a).ravel()
    f = np.asarray(fix, bool).ravel()
    n_fix, n_pix = int(f.sum()), f.size
    if n_fix == 0 or n_fix == n_pix:
        return float("nan")
    th = np.unique(s[f])[::-1]
    fix_sorted, non_sorted = np.sort(s[f]), np.sort(s[~f])
    tp = n_fix - np.searchsorted(fix_sorted, th, side="left")
    fp = (n_pix - n_fix) - np.searchsorted(non_sorted, th, side="left")
    tp = np.concatenate([[0.0], tp / n_fix, [1.0]])
    fp = np.concatenate([[0.0], fp / (n_pix - n_fix), [1.0]])
    return float(np.trapezoid(tp, fp))


def auc_borji(
    a, fix, splits: int = 100, step: float = 0.1, seed: int = 0, negatives: np.ndarray | None = None
) -> float:
    """AUC-Borji (Bylinskii et al. 2019, §3.1.1; Borji et al. 2013; MIT ``AUC_Borji.m``): the map is
    min-max normalised; for each of ``splits`` sets of N_fix pixels drawn uniformly with replacement
    from the whole image (the negatives), thresholds run from max(values at fixations and negatives)
    down to 0 by ``step``; TP = share of fixations >= threshold, FP = share of negatives >= threshold,
    curve from (0, 0) to (1, 1), trapezoid area; the score is the mean over splits.

    ``negatives`` (splits x N_fix pixel indices) replaces the random draw (tests)."""
    s = minmax(a).ravel()
    f = np.asarray(fix, bool).ravel()
    sth = s[f]
    n_fix = sth.size
    if n_fix == 0:
        return float("nan")
    if negatives is None:
        negatives = np.random.default_rng(seed).integers(0, s.size, size=(splits, n_fix))
    aucs = []
    for neg in np.asarray(negatives):
        cur = s[neg]
        top = max(sth.max(), cur.max())
        threshes = np.arange(0.0, top + 1e-12, step)[::-1]  # MATLAB fliplr(0:step:max)
        tp = np.concatenate([[0.0], (sth[None, :] >= threshes[:, None]).mean(1), [1.0]])
        fp = np.concatenate([[0.0], (cur[None, :] >= threshes[:, None]).mean(1), [1.0]])
        aucs.append(np.trapezoid(tp, fp))
    return float(np.mean(aucs))


def nss(a, fix) -> float:
    """Normalised scanpath saliency (Bylinskii et al. 2019, §3.1.2; Peters et al. 2005; MIT ``NSS.m``):
    the map standardised to zero mean and unit standard deviation (MATLAB ``std``: ddof 1), averaged
    over the fixated pixels."""
    s = _f(a).ravel()
    f = np.asarray(fix, bool).ravel()
    sd = s.std(ddof=1)
    if f.sum() == 0 or sd == 0:
        return float("nan")
    return float(((s - s.mean()) / sd)[f].mean())


def ssim(a, b, window: int = 7, data_range: float = 1.0, k1: float = 0.01, k2: float = 0.03) -> float:
    """Structural similarity (Wang et al., IEEE TIP 2004, Eq. 13) of two 2-D maps, the mean of the
    local SSIM over a ``window`` x ``window`` uniform window, with sample (ddof 1) local variances,
    C1 = (K1 L)^2, C2 = (K2 L)^2, L = ``data_range``, and the border of half a window excluded
    (the conventions of scikit-image's ``structural_similarity``). Used on explanation maps by
    Adebayo et al. 2018; pass [0, 1]-normalised maps."""
    x, y = _f(a), _f(b)
    if x.ndim != 2 or x.shape != y.shape:
        raise ValueError("ssim needs two 2-D maps of the same shape")
    if min(x.shape) < window:
        raise ValueError(f"maps smaller than the {window}x{window} window")
    npix = window * window
    cov_norm = npix / (npix - 1)
    mean = lambda t: ndimage.uniform_filter(t, size=window, mode="reflect")  # noqa: E731
    ux, uy = mean(x), mean(y)
    vx = cov_norm * (mean(x * x) - ux * ux)
    vy = cov_norm * (mean(y * y) - uy * uy)
    vxy = cov_norm * (mean(x * y) - ux * uy)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    p = (window - 1) // 2
    return float(s[p:-p, p:-p].mean())


def iou_masks(m1, m2) -> float:
    """|A ∩ B| / |A ∪ B| of two boolean masks (NaN if both are empty)."""
    m1, m2 = np.asarray(m1, bool), np.asarray(m2, bool)
    u = np.logical_or(m1, m2).sum()
    return float(np.logical_and(m1, m2).sum() / u) if u else float("nan")


def dice_masks(m1, m2) -> float:
    """Dice (Sørensen) coefficient 2|A ∩ B| / (|A| + |B|) of two boolean masks (NaN if both empty)."""
    m1, m2 = np.asarray(m1, bool), np.asarray(m2, bool)
    s = m1.sum() + m2.sum()
    return float(2 * np.logical_and(m1, m2).sum() / s) if s else float("nan")


def iou(a, b, quantile: float = 0.8) -> float:
    """IoU of the two maps, each binarised at its own ``quantile`` (pixels >= it; survey §7)."""
    return iou_masks(binarise(a, quantile), binarise(b, quantile))


def dice(a, b, quantile: float = 0.8) -> float:
    """Dice coefficient of the two maps, each binarised at its own ``quantile`` (Galli et al. 2021)."""
    return dice_masks(binarise(a, quantile), binarise(b, quantile))


# ---- map vs ground truth ---------------------------------------------------------------------
def pointing_game(a, mask, tolerance: int = 0) -> float:
    """Pointing game (Zhang et al., IJCV 2018): 1.0 if a pixel holding the map's maximum lies in the
    ground truth (dilated by ``tolerance`` pixels), else 0.0; NaN for an empty mask. Ties count as
    a hit if any maximal pixel hits (Quantus ``PointingGame``)."""
    a = _f(a)
    m = np.asarray(mask, bool)
    if not m.any():
        return float("nan")
    if tolerance > 0:
        yy, xx = np.mgrid[-tolerance : tolerance + 1, -tolerance : tolerance + 1]
        m = ndimage.binary_dilation(m, structure=(yy * yy + xx * xx) <= tolerance * tolerance)
    return float(np.any(m & (a == a.max())))


def relevance_mass_accuracy(a, mask) -> float:
    """Relevance mass accuracy (Arras et al., CLEVR-XAI, 2022): R_within / R_total, the sum of the map
    inside the ground truth over its total sum (Quantus ``RelevanceMassAccuracy``; pass the positive
    part of a signed map, as Arras et al. do). NaN for an empty mask."""
    a = _f(a).ravel()
    m = np.asarray(mask, bool).ravel()
    if not m.any():
        return float("nan")
    tot = a.sum()
    return float(a[m].sum() / tot) if tot != 0 else float("nan")


def relevance_rank_accuracy(a, mask) -> float:
    """Relevance rank accuracy (Arras et al., CLEVR-XAI, 2022): with K = |ground truth|, the share of
    the K highest-relevance pixels that lie inside the ground truth (Quantus
    ``RelevanceRankAccuracy``; ties broken by position). NaN for an empty mask."""
    a = _f(a).ravel()
    m = np.asarray(mask, bool).ravel()
    k = int(m.sum())
    if k == 0:
        return float("nan")
    top = np.argsort(-a, kind="stable")[:k]
    return float(m[top].sum() / k)


def iou_gt(a, mask, threshold: float = 0.5) -> float:
    """IoU of the ground truth with {map >= threshold * max(map)} on the map's positive part
    (the thresholded-map localisation of Selvaraju et al., ICCV 2017, without the bounding box)."""
    a = np.clip(_f(a), 0, None)
    hi = a.max()
    on = a >= threshold * hi if hi > 0 else np.zeros(a.shape, bool)
    return iou_masks(on, mask)


# ---- complexity --------------------------------------------------------------------------------
def sparseness(a) -> float:
    """Gini index of the map's absolute values (Chalasani et al., ICML 2020; Hurley & Rickard 2009), as
    Quantus ``Sparseness``: with v = sort(|a| + 1e-7) ascending and n entries,
    G = sum_i (2i - n - 1) v_i / (n sum_i v_i). 0 for a uniform map, (n-1)/n for a one-hot one."""
    v = np.sort(np.abs(_f(a)).ravel() + 1e-7)
    n = v.size
    i = np.arange(1, n + 1)
    return float(((2 * i - n - 1) * v).sum() / (n * v.sum()))


def spearman(a, b) -> float:
    """Spearman rank correlation: Pearson correlation of the average ranks (ties share a rank)."""
    return cc(rankdata(_f(a).ravel()), rankdata(_f(b).ravel()))


# ---- map vs map on demand -----------------------------------------------------------------------
def saliency_form(a) -> np.ndarray:
    """A map as the map-vs-map metrics read it, in [0, 1]: a signed map (one with negative values:
    IG, LRP, DeepLIFT, ... as served with ``abs_max`` or ``none``) by its magnitude |a|, so that zero
    relevance stays the least salient (min-max of the signed values would put it mid-range); then
    min-max, as the MIT saliency benchmark normalises."""
    a = _f(a)
    return minmax(np.abs(a) if a.min() < 0 else a)


def compare_maps(a, b, name: str, params: dict | None = None) -> float:
    """One map-vs-map metric by its catalog name; ``b`` is the reference (fixations come from it).
    Both maps are read by :func:`saliency_form` first (signed maps by their magnitude)."""
    p = dict(params or {})
    a, b = saliency_form(a), saliency_form(b)
    if name == "cc":
        return cc(a, b)
    if name == "sim":
        return sim(a, b)
    if name == "kl":
        return kl(a, b)
    if name == "ssim":
        return ssim(a, b, window=p.get("window", 7))
    if name in ("iou", "dice"):
        return (iou if name == "iou" else dice)(a, b, p.get("quantile", 0.8))
    fix = fixations(b, p.get("fixation_quantile", 0.9))
    if name == "auc_judd":
        return auc_judd(a, fix)
    if name == "nss":
        return nss(a, fix)
    if name == "auc_borji":
        return auc_borji(a, fix, splits=p.get("splits", 100), step=p.get("step", 0.1), seed=p.get("seed", 0))
    raise KeyError(f"{name!r} is not a map-vs-map metric")
