"""Metrics of workers.evaluation.metrics on small arrays, each against a number computed by hand
(the derivation is in the test) or an independent reference (scikit-image's SSIM)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from workers.evaluation import metrics as M


def test_cc_hand():
    # a = [1,2,3], b = [1,3,2]: deviations [-1,0,1], [-1,1,0]; sum of products 1, sums of squares 2 and 2 -> 1/2
    assert M.cc([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5, abs=1e-12)
    assert M.cc([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(1.0, abs=1e-12)
    assert M.cc([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0, abs=1e-12)
    assert math.isnan(M.cc([1, 1, 1], [1, 2, 3]))


def test_sim_hand():
    # [0,1,2,3] -> min-max [0,1/3,2/3,1] -> /sum(2) [0,1/6,1/3,1/2]; reversed map [1/2,1/3,1/6,0];
    # min per pixel [0,1/6,1/6,0] -> 1/3
    assert M.sim([0, 1, 2, 3], [3, 2, 1, 0]) == pytest.approx(1 / 3, abs=1e-12)
    assert M.sim([0, 1, 2, 3], [0, 2, 4, 6]) == pytest.approx(1.0, abs=1e-12)


def test_kl_hand():
    # P = [1,1,2]/4, Q = [2,1,1]/4: KL(Q||P) = .5 ln(.5/.25) + .25 ln 1 + .25 ln(.25/.5) = .25 ln 2
    assert M.kl([1, 1, 2], [2, 1, 1]) == pytest.approx(0.25 * math.log(2), abs=1e-12)
    assert M.kl([1, 2, 3], [1, 2, 3]) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        M.kl([-1, 2], [1, 2])


def test_auc_judd_hand():
    # map [1, .75, 0, .25, .5], fixations at 1 and .25 (N_pix 5, N_fix 2). Thresholds 1: TP 1/2, FP 0/3;
    # .25: TP 1, FP (4 pixels >= .25 minus 2 fixations)/3 = 2/3. Curve (0,0),(0,.5),(2/3,1),(1,1):
    # area 0 + (.5+1)/2 * 2/3 + 1/3 = 5/6
    s = np.array([1.0, 0.75, 0.0, 0.25, 0.5])
    fix = np.array([1, 0, 0, 1, 0], bool)
    assert M.auc_judd(s, fix) == pytest.approx(5 / 6, abs=1e-12)
    # ties: both fixations on the value 0 shared with the two other zeros: one ROC point (1, 1) -> 0.5
    # (MATLAB's per-fixation formula would give FP = (5 - 1)/3 > 1 here)
    assert M.auc_judd([1, 0, 0, 0, 0], [0, 1, 1, 0, 0]) == pytest.approx(0.5, abs=1e-12)
    # perfect separation: 1
    assert M.auc_judd([0.9, 0.8, 0.1, 0.0], [1, 1, 0, 0]) == pytest.approx(1.0, abs=1e-12)


def test_auc_borji_hand():
    # map [1,0,0,0], fixation on pixel 0. Split with negative pixel 0 (value 1): every threshold in
    # 1, .9, ..., 0 gives TP = FP = 1 -> area 0.5. Split with negative pixel 1 (value 0): TP 1, FP 0
    # down to threshold .1, FP 1 at 0 -> area 1. Mean 0.75.
    s, fix = np.array([1.0, 0, 0, 0]), np.array([1, 0, 0, 0], bool)
    assert M.auc_borji(s, fix, negatives=np.array([[0], [1]])) == pytest.approx(0.75, abs=1e-12)
    # random negatives: expectation 1/4 * .5 + 3/4 * 1 = .875
    assert M.auc_borji(s, fix, splits=1000, seed=1) == pytest.approx(0.875, abs=0.03)


def test_nss_hand():
    # [1,2,3,4]: mean 2.5, std (ddof 1) sqrt(5/3); the fixation on 4 -> 1.5 / sqrt(5/3)
    assert M.nss([1, 2, 3, 4], [0, 0, 0, 1]) == pytest.approx(1.5 / math.sqrt(5 / 3), abs=1e-12)


def test_ssim_against_skimage():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(0)
    a = rng.uniform(size=(16, 20))
    b = np.clip(a + rng.normal(0, 0.2, a.shape), 0, 1)
    ref = structural_similarity(a, b, win_size=7, data_range=1.0)
    assert M.ssim(a, b) == pytest.approx(ref, abs=1e-10)
    assert M.ssim(a, a) == pytest.approx(1.0, abs=1e-12)


def test_iou_dice_quantile_hand():
    # quantile .8 of 0..9 is 7.2: a is on at indices {8, 9}; b (= a with 7,8,9 permuted to 9,8,7) is on
    # where b >= 7.2: indices {7, 8}. Overlap {8}: IoU 1/3, Dice 2*1/(2+2) = 1/2
    a = np.arange(10.0)
    b = np.array([0, 1, 2, 3, 4, 5, 6, 9, 8, 7.0])
    assert M.iou(a, b, 0.8) == pytest.approx(1 / 3, abs=1e-12)
    assert M.dice(a, b, 0.8) == pytest.approx(0.5, abs=1e-12)


def test_pointing_game_hand():
    a = np.zeros((8, 8))
    a[0, 0] = 1
    mask = np.zeros((8, 8), bool)
    mask[0, 2] = True
    assert M.pointing_game(a, mask) == 0.0
    assert M.pointing_game(a, mask, tolerance=2) == 1.0  # distance 2 <= tolerance 2
    assert M.pointing_game(a, mask, tolerance=1) == 0.0
    assert math.isnan(M.pointing_game(a, np.zeros((8, 8), bool)))


def test_relevance_mass_and_rank_hand():
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    mask = np.array([[1, 0], [0, 1]], bool)
    # mass: (1 + 4) / 10; rank: K = 2, the two largest are 4 (in) and 3 (out) -> 1/2
    assert M.relevance_mass_accuracy(a, mask) == pytest.approx(0.5, abs=1e-12)
    assert M.relevance_rank_accuracy(a, mask) == pytest.approx(0.5, abs=1e-12)


def test_iou_gt_hand():
    # threshold .5 of max 1: on = {.6, 1.0} = pixels {2, 3}; mask {1, 2} -> IoU 1/3
    assert M.iou_gt([0, 0.2, 0.6, 1.0], np.array([0, 1, 1, 0], bool)) == pytest.approx(1 / 3, abs=1e-12)


def test_sparseness_hand():
    # one-hot of 4 (plus Quantus' 1e-7): G = (3 + 0 * 1e-7) / (4 (1 + 4e-7)) = 0.75 up to 1e-6; uniform: 0
    assert M.sparseness([0, 0, 0, 5.0]) == pytest.approx(0.75, abs=1e-6)
    assert M.sparseness([2.0, 2.0, 2.0, 2.0]) == pytest.approx(0.0, abs=1e-12)


def test_spearman_hand():
    # ranks of [10, 20, 30] and [1, 3, 2] are [1,2,3], [1,3,2] -> Pearson of the ranks = 1/2
    assert M.spearman([10, 20, 30], [1, 3, 2]) == pytest.approx(0.5, abs=1e-12)


def test_compare_maps_identical_and_reference():
    rng = np.random.default_rng(1)
    a = rng.uniform(size=(12, 12))
    for name, want in [("cc", 1.0), ("sim", 1.0), ("kl", 0.0), ("ssim", 1.0), ("iou", 1.0), ("dice", 1.0)]:
        assert M.compare_maps(a, a, name) == pytest.approx(want, abs=1e-9), name
    assert M.compare_maps(a, a, "auc_judd") > 0.9
