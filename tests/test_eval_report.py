"""The benchmark command end to end on the committed Clever-Hans model (small), and the Clever-Hans
model's defining behaviour: accurate with its watermark, at chance without it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from schemas.registry import load_registry
from workers.evaluation import report
from workers.models.loading import load_model
from workers.training import clever_hans


@pytest.fixture(scope="module")
def ch_model():
    reg = load_registry()
    return load_model(reg.get("clever-hans-cnn"), reg)


def test_clever_hans_accuracy_collapses(ch_model):
    torch.set_num_threads(1)
    acc = clever_hans.accuracies(ch_model.module, n=40, seed=21)
    assert acc["accuracy_watermark"] >= 0.95
    assert acc["accuracy_removed"] <= 0.3 and acc["accuracy_moved"] <= 0.3
    assert acc["follows_watermark_swapped"] >= 0.9  # the prediction is the watermark's class


def test_clever_hans_data_masks():
    x, y, obj, wm = clever_hans.data(3, 5, "watermark")
    y0, x0, y1, x1 = clever_hans.watermark_box()
    assert wm[:, y0:y1, x0:x1].all() and wm.sum() == 3 * clever_hans.WM**2
    assert not (obj & wm).any()
    np.testing.assert_array_equal(x[0, y0, x0], clever_hans.PALETTE[y[0]])
    _, _, _, wm_r = clever_hans.data(3, 5, "removed")
    assert not wm_r.any()


def test_default_methods_are_the_applicable_implementations(ch_model):
    from workers.explain import IMPLEMENTATIONS, applicability

    names, skipped = report.default_methods(ch_model)
    assert set(names) | set(skipped) == set(IMPLEMENTATIONS)
    assert all(applicability(ch_model)[k] is None for k in names)


def test_report_writes_report(tmp_path):
    out = tmp_path / "rep"
    rc = report.main(
        [
            "--model",
            "clever-hans-cnn",
            "--images",
            "clever-hans",
            "--n",
            "2",
            "--methods",
            "gradcam",
            "saliency",
            "--metrics",
            "pointing_game,relevance_mass_accuracy,time_ms,model_randomisation",
            "--metric-params",
            '{"model_randomisation": {"layers": 2}}',
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    text = (out / "report.md").read_text()
    for s in (
        "| gradcam |",
        "| saliency |",
        "mass_watermark",
        "mass_object",
        "time_ms",
        "± ",
        "accuracy with the watermark removed",
    ):
        assert s in text, s
    res = json.loads((out / "results.json").read_text())
    assert len(res["per_image"]["gradcam"]["pointing_game"]) == 2
    assert len(res["per_image"]["saliency"]["model_randomisation.spearman"]) == 2
    for f in ("maps.png", "metrics.png", "sanity.png"):
        assert (out / f).stat().st_size > 1000
