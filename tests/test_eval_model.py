"""Model-based metrics on a linear model where the expected numbers follow by hand, and the
evaluate()/compare() API with the metric catalog of schemas/metrics.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from pydantic import ValidationError

from schemas.metrics import METRICS, GroundTruth, MetricCall, check_metrics
from schemas.registry import ModelEntry
from workers.evaluation import (
    IMPLEMENTED_METRICS,
    compare,
    compare_methods,
    evaluate,
    faithfulness,
    ground_truth_mask,
    robustness,
    sanity,
)
from workers.evaluation.common import map_fn, reduce_map
from workers.models.loading import load_model
from workers.models.shapes_cnn import ShapesCNN


def linear_model(w, size=(2, 2)):
    """logit_0 = sum(w * x), logit_1 = 0 on a 1-channel image; mean 0 / std 1 (input = pixels)."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(size)), 2, bias=False))
    with torch.no_grad():
        net[1].weight.zero_()
        net[1].weight[0] = torch.as_tensor(w, dtype=torch.float32).reshape(-1)
    entry = ModelEntry(
        name="lin",
        architecture="whitebox.shapes_cnn",
        num_classes=2,
        input={"size": list(size), "mean": [0.0], "std": [1.0]},
    )
    return load_model(entry, module=net)


def test_deletion_insertion_hand():
    # x = [[4,3],[2,1]], relevance = x, logit = sum, fill 0, 4 steps of one pixel.
    # deletion: 10, 6, 3, 1, 0 -> trapezoid on [0,1] = (10/2 + 6 + 3 + 1 + 0/2) / 4 = 3.75
    # insertion (from 0): 0, 4, 7, 9, 10 -> (0 + 4 + 7 + 9 + 10/2) / 4 = 6.25
    m = linear_model([1, 1, 1, 1])
    x = torch.tensor([[[[4.0, 3.0], [2.0, 1.0]]]])
    d, curve = faithfulness.deletion_insertion(
        m, x, 0, x[0, 0], mode="deletion", fill="constant", value=0.0, steps=4, score="logit", batch_size=2
    )
    np.testing.assert_allclose(curve, [10, 6, 3, 1, 0], atol=1e-6)
    assert d == pytest.approx(3.75, abs=1e-6)
    i, curve = faithfulness.deletion_insertion(
        m, x, 0, x[0, 0], mode="insertion", fill="constant", value=0.0, steps=4, score="logit"
    )
    np.testing.assert_allclose(curve, [0, 4, 7, 9, 10], atol=1e-6)
    assert i == pytest.approx(6.25, abs=1e-6)


def test_faithfulness_correlation_linear_is_one():
    # Bhatt et al.: for f = w.x, a = w * x and a zero baseline, the drop f(x) - f(x_S=0) equals sum_S a_i
    # exactly, so the correlation over subsets is 1
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, generator=g)
    m = linear_model(w, (4, 4))
    x = torch.rand(2, 1, 4, 4, generator=g)
    a = (w.view(1, 1, 4, 4) * x)[:, 0]
    r = faithfulness.faithfulness_correlation(m, x, torch.tensor([0, 0]), a, runs=12, subset_size=3, seed=5)
    np.testing.assert_allclose(r, [1.0, 1.0], atol=1e-6)


def test_fgsm_hand_and_robustness():
    # target 0, logits [w.x, 0]: d CE / dx = -(1 - p0) w, so FGSM moves x by -eps * sign(w)
    m = linear_model([1, -1, 2, -2])
    x = torch.tensor([[[[0.9, 0.1], [0.9, 0.1]]]])
    xa = robustness.fgsm(m, x, torch.tensor([0]), 0.1)
    np.testing.assert_allclose(xa.flatten().numpy(), [0.8, 0.2, 0.8, 0.2], atol=1e-6)
    # saliency of a linear model is |w| wherever x is: Dice 1, CC 1. eps .1: w.x goes 2.4 -> 1.6 (class 0
    # kept); eps .5: x' = [.4,.6,.4,.6], w.x = -.6 < 0 = logit 1 (prediction changes)
    fn = map_fn("saliency")
    for eps, changed in [(0.1, 0.0), (0.5, 1.0)]:
        r = robustness.adversarial_robustness(m, x, torch.tensor([0]), fn, attack="fgsm", epsilon=eps)[0]
        assert r["dice"] == pytest.approx(1.0) and r["cc"] == pytest.approx(1.0, abs=1e-9)
        assert r["prediction_changed"] == changed


def test_deepfool_crosses_the_boundary():
    # DeepFool on a linear binary model reaches the boundary w.x = 0 in one step, (1 + overshoot) past it
    m = linear_model([1, -1, 2, -2])
    x = torch.tensor([[[[0.6, 0.4], [0.6, 0.4]]]])  # w.x = 0.6
    xa = robustness.deepfool(m, x, torch.tensor([0]), overshoot=0.02)
    w = torch.tensor([1.0, -1, 2, -2])
    # r = -(0.6 + 1e-4) / |w|^2 * w, x' = x + 1.02 r: w.x' = 0.6 - 1.02 * 0.6001
    assert float((xa.flatten() * w).sum()) == pytest.approx(0.6 - 1.02 * 0.6001, abs=1e-5)


def test_max_sensitivity_linear_saliency_is_zero():
    # Yeh et al.: the gradient of a linear model does not change with the input -> sensitivity 0
    m = linear_model([1, -1, 2, -2])
    x = torch.full((2, 1, 2, 2), 0.5)
    s = robustness.max_sensitivity(m, x, torch.tensor([0, 0]), map_fn("saliency"), radius=0.2, samples=4)
    np.testing.assert_allclose(s, [0.0, 0.0], atol=1e-12)
    # a map that is the input itself moves by at most the noise: ||d|| / ||x|| <= 0.2 * 2 / (0.5 * 2)
    s = robustness.max_sensitivity(m, x, torch.tensor([0, 0]), lambda mm, xx, tt: xx[:, 0], radius=0.2, samples=4)
    assert np.all((s > 0) & (s <= 0.4 + 1e-9))


def _shapes_model():
    torch.manual_seed(0)
    entry = ModelEntry(
        name="s",
        architecture="whitebox.shapes_cnn",
        num_classes=10,
        input={"size": [64, 64], "mean": [0.5] * 3, "std": [0.25] * 3},
    )
    return load_model(entry, module=ShapesCNN(width=8))


def test_randomisation_of_a_model_independent_map():
    # Adebayo et al.: a map that ignores the model (here the input's first channel, an 'edge detector'
    # stand-in) stays identical under randomisation: Spearman 1 and SSIM 1 at every layer
    m = _shapes_model()
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    r = sanity.cascading_randomisation(m, x, torch.tensor([0]), lambda mm, xx, tt: xx[:, 0])
    assert r["layers"] == ["classifier.4", "classifier.1", "features.9", "features.6", "features.3", "features.0"]
    np.testing.assert_allclose(r["spearman"], 1.0, atol=1e-12)
    np.testing.assert_allclose(r["ssim"], 1.0, atol=1e-12)
    r = sanity.cascading_randomisation(m, x, torch.tensor([0]), map_fn("gradcam"), layers=2)
    assert len(r["layers"]) == 2


def test_evaluation_reduces_like_the_service():
    """The map a metric scores is the one the service renders: SmoothGrad over integrated gradients
    sums the channels (as integrated gradients does), SmoothGrad over saliency takes max |.|."""
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(2, 3, 4, 5, generator=g)
    torch.testing.assert_close(reduce_map("smoothgrad", maps, {"base": "integrated_gradients"}), maps.sum(1))
    torch.testing.assert_close(reduce_map("integrated_gradients", maps), maps.sum(1))
    torch.testing.assert_close(reduce_map("smoothgrad", maps, {"base": "saliency"}), maps.abs().amax(1))
    torch.testing.assert_close(reduce_map("smoothgrad", maps), maps.abs().amax(1))


def test_catalog_matches_implementations():
    assert set(METRICS) == set(IMPLEMENTED_METRICS)
    for spec in METRICS.values():
        assert spec.reference and spec.summary
        spec.describe()


def test_metric_call_and_checks():
    assert MetricCall.model_validate("cc").params == {}
    assert MetricCall.model_validate({"name": "iou", "params": {"quantile": 0.9}}).params == {"quantile": 0.9}
    with pytest.raises(ValidationError):
        MetricCall.model_validate("nope")
    with pytest.raises(ValidationError):
        MetricCall.model_validate({"name": "iou", "params": {"quantile": 1.5}})
    with pytest.raises(ValidationError):
        MetricCall.model_validate({"name": "ssim", "params": {"window": 8}})
    assert check_metrics(["pointing_game"], has_ground_truth=False)
    assert not check_metrics(["pointing_game", "deletion_auc"], has_ground_truth=True)
    assert check_metrics(["deletion_auc"], has_ground_truth=False, for_compare=True)
    with pytest.raises(ValidationError):
        GroundTruth(box=(0, 0, 10, 10), polygon=[(0, 0), (1, 0), (0, 1)])
    with pytest.raises(ValidationError):
        GroundTruth(box=(5, 0, 1, 10))


def test_ground_truth_mask_box_and_polygon():
    # box 32 x 16 in a 64 x 64 image -> 16 x 8 = 128 pixels at the model's 32 x 32
    m = ground_truth_mask({"box": [0, 0, 32, 16]}, (64, 64), (32, 32))
    assert m.shape == (32, 32) and m.sum() == 128 and m[:8, :16].all()
    m = ground_truth_mask(GroundTruth(polygon=[(0, 0), (8, 0), (8, 8), (0, 8)]), (16, 16), (16, 16))
    assert 64 <= m.sum() <= 81


def test_evaluate_and_compare_api():
    m = _shapes_model()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 64, 64, generator=g)
    gt = np.zeros((64, 64), bool)
    gt[16:48, 16:48] = True
    res = evaluate(
        m,
        x,
        None,
        ["gradcam", {"name": "fem", "params": {"k": 0.5}}],
        [
            "pointing_game",
            "sparseness",
            {"name": "deletion_auc", "params": {"steps": 8}},
            {"name": "robustness_fgsm"},
            "time_ms",
        ],
        gt_mask=gt,
    )
    assert set(res) == {"gradcam", "fem"}
    assert set(res["fem"]) == {"pointing_game", "sparseness", "deletion_auc", "robustness_fgsm", "time_ms"}
    assert set(res["fem"]["robustness_fgsm"]) == {"dice", "cc", "prediction_changed"}
    assert 0 <= res["gradcam"]["sparseness"] <= 1 and res["gradcam"]["time_ms"] > 0
    ps = evaluate(m, x, 3, ["saliency"], ["pointing_game"], gt_mask=gt, per_sample=True)
    assert len(ps["saliency"]["pointing_game"]) == 2
    with pytest.raises(ValueError):
        evaluate(m, x, None, ["saliency"], ["pointing_game"])  # needs a ground truth
    # the same method twice is told apart by its params
    two = evaluate(m, x[:1], None, ["fem", {"name": "fem", "params": {"k": 2.0}}], ["sparseness"])
    assert len(two) == 2
    c = compare_methods(m, x[:1], "gradcam", "gradcam")
    assert c["cc"] == pytest.approx(1.0) and c["kl"] == pytest.approx(0.0, abs=1e-9)
    a = np.random.default_rng(0).uniform(size=(16, 16))
    assert compare(a, a, ["ssim", "sim"]) == pytest.approx({"ssim": 1.0, "sim": 1.0})
    with pytest.raises(KeyError):
        compare(a, a, ["deletion_auc"])


def test_local_fgsm_matches_the_library_attack():
    # the local fallback and the library's `adversarial` method (its map is x' - x) give the same x'
    from workers.explain import IMPLEMENTATIONS, attribute

    if "adversarial" not in IMPLEMENTATIONS:
        pytest.skip("no adversarial method registered")
    m = _shapes_model()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4)) * 2 - 1
    t = torch.tensor([1, 2])
    lib = x + attribute(m, x, t, "adversarial", {"attack": "fgsm", "epsilon": 4 / 255}).maps
    ours = robustness.fgsm(m, x, t, 4 / 255)
    torch.testing.assert_close(ours, lib, atol=1e-6, rtol=0)
