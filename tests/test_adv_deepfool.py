"""DeepFool on the trained demo model: the perturbation flips the prediction on >= 95 % of
100 generated images (figures: `python -m workers.generators.measure deepfool`)."""
from __future__ import annotations

import pytest
import torch

from workers.generators.measure import deepfool_figures, demo_model

torch.set_num_threads(1)


def test_deepfool_flips_demo_model():
    m = demo_model()
    if m is None:
        pytest.skip("workers/weights/shapes-cnn.safetensors is absent (demo model not trained yet)")
    fig = deepfool_figures(m, n=100)
    print(fig)
    assert fig["flip_rate"] >= 0.95, fig
    assert 0 < fig["median_relative_l2"] < 0.1, fig
