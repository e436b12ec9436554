"""The metrics Whitebox shares with Quantus 0.6, checked against Quantus on the same inputs (<= 1e-6).

Quantus is a test reference only; the service computes with workers.evaluation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

quantus = pytest.importorskip("quantus")

from schemas.registry import ModelEntry  # noqa: E402
from workers.evaluation import faithfulness, sanity  # noqa: E402
from workers.evaluation import metrics as M
from workers.evaluation.common import map_fn  # noqa: E402
from workers.models.loading import load_model  # noqa: E402
from workers.models.shapes_cnn import ShapesCNN  # noqa: E402

TOL = 1e-6


@pytest.fixture(scope="module")
def arrays():
    rng = np.random.default_rng(7)
    a = rng.normal(size=(6, 1, 12, 12)).astype(np.float32)
    a[1] = np.abs(a[1])
    s = np.zeros((6, 1, 12, 12), np.float32)
    for i in range(6):
        y, x = rng.integers(0, 8, 2)
        s[i, 0, y : y + rng.integers(2, 5), x : x + rng.integers(2, 5)] = 1
    a[2, 0, 5, 5] = a[2].max() + 1  # a maximum inside / outside masks both happen
    s[2, 0, 5, 5] = 1
    x = rng.uniform(size=(6, 1, 12, 12)).astype(np.float32)
    return x, np.zeros(6, dtype=np.int64), a, s


def _q(metric, arrays):
    x, y, a, s = arrays
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(metric(model=None, x_batch=x, y_batch=y, a_batch=a.copy(), s_batch=s), dtype=np.float64)


def test_pointing_game(arrays):
    ref = _q(quantus.PointingGame(abs=False, normalise=False, disable_warnings=True), arrays)
    ours = [M.pointing_game(a[0], s[0].astype(bool)) for a, s in zip(arrays[2], arrays[3])]
    assert 0 < ref.sum() < len(ref)  # both hits and misses are exercised
    np.testing.assert_allclose(ours, ref, atol=TOL)


def test_relevance_mass_accuracy(arrays):
    ref = _q(quantus.RelevanceMassAccuracy(abs=False, normalise=False, disable_warnings=True), arrays)
    ours = [M.relevance_mass_accuracy(a[0], s[0].astype(bool)) for a, s in zip(arrays[2], arrays[3])]
    np.testing.assert_allclose(ours, ref, atol=TOL)


def test_relevance_rank_accuracy(arrays):
    ref = _q(quantus.RelevanceRankAccuracy(abs=False, normalise=False, disable_warnings=True), arrays)
    ours = [M.relevance_rank_accuracy(a[0], s[0].astype(bool)) for a, s in zip(arrays[2], arrays[3])]
    np.testing.assert_allclose(ours, ref, atol=TOL)


def test_sparseness(arrays):
    ref = _q(quantus.Sparseness(abs=True, normalise=False, disable_warnings=True), arrays)
    ours = [M.sparseness(a) for a in arrays[2]]
    np.testing.assert_allclose(ours, ref, atol=TOL)


def _model(width=8):
    torch.manual_seed(3)
    net = ShapesCNN(num_classes=10, width=width)
    # mean 0 / std 1: the normalised input is the array Quantus perturbs, so both fill the same value
    entry = ModelEntry(
        name="q",
        architecture="whitebox.shapes_cnn",
        num_classes=10,
        input={"size": [64, 64], "mean": [0.0] * 3, "std": [1.0] * 3},
    )
    return load_model(entry, module=net)


def test_faithfulness_correlation_same_draws():
    torch.set_num_threads(1)
    model = _model()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 64, 64, generator=g)
    y = torch.tensor([1, 4, 7])
    a = torch.randn(3, 1, 64, 64, generator=g)
    np.random.seed(11)
    metric = quantus.FaithfulnessCorrelation(
        nr_runs=20,
        subset_size=224,
        abs=False,
        normalise=False,
        perturb_baseline=0.0,
        disable_warnings=True,
        return_aggregate=False,
    )
    ref = np.asarray(
        metric(
            model=model.module,
            x_batch=x.numpy(),
            y_batch=y.numpy(),
            a_batch=a.double().numpy(),
            device="cpu",
            softmax=False,
        ),
        dtype=np.float64,
    )
    ours = faithfulness.faithfulness_correlation(
        model, x, y, a[:, 0], runs=20, subset_size=224, value=0.0, seed=11, batch_size=3
    )
    # batch_size=3: one forward per run of the 3 images, as Quantus does; with larger batches the float32
    # convolutions round differently and the (tiny) logit drops of this random net differ by ~2e-6
    assert np.all(np.isfinite(ref))
    np.testing.assert_allclose(ours, ref, atol=TOL)


def test_model_parameter_randomisation_cascading():
    torch.set_num_threads(1)
    model = _model()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 64, 64, generator=g)
    y = torch.tensor([2, 5])
    fn = map_fn("saliency")

    def explain(model, inputs, targets, **kw):  # Quantus hands over a (randomised) torch module
        from workers.evaluation.common import with_module

        return fn(with_module(_model(), model), torch.as_tensor(inputs), torch.as_tensor(targets))[:, None].numpy()

    a = explain(model.module, x, y)
    metric = quantus.MPRT(abs=True, normalise=True, layer_order="top_down", seed=42, disable_warnings=True)
    ref = metric(
        model=model.module,
        x_batch=x.numpy(),
        y_batch=y.numpy(),
        a_batch=a,
        explain_func=explain,
        device="cpu",
        softmax=False,
    )
    ours = sanity.cascading_randomisation(model, x, y, fn, seed=42)
    ref_layers = [k for k in ref if k != "original"]
    assert ours["layers"] == ref_layers
    np.testing.assert_allclose(ours["spearman"], np.array([ref[k] for k in ref_layers]), atol=TOL)
    # the loaded model is untouched by the cascade
    torch.manual_seed(3)
    fresh = ShapesCNN(num_classes=10, width=8)
    for (k, v), (_, w) in zip(model.module.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(v, w), k
