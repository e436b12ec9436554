"""DeepFool on the trained demo model: the perturbation flips the prediction on >= 95 % of
100 generated images (the images of `python -m workers.training.measure deepfool`:
generate(100, 4242)), also on the images whose softmax probability is exactly 1.0 in float32
(DeepFool works on the logits and does not saturate). Figures in docs/perturbation.md."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workers.explain import attribute
from workers.training.measure import demo_model
from workers.training.shapes import generate, to_tensor

torch.set_num_threads(1)


def test_deepfool_flips_demo_model():
    m = demo_model()
    if m is None:
        pytest.skip("workers/models/weights/shapes-cnn.safetensors is absent (demo model not trained yet)")
    x = to_tensor(generate(100, 4242)[0])
    with torch.no_grad():
        logits = m.module(x)
    t = logits.argmax(1)
    saturated = (torch.softmax(logits, 1).amax(1) == 1.0).numpy()
    metas = []
    for s in range(0, 100, 25):
        metas += attribute(m, x[s : s + 25], t[s : s + 25], "adversarial", {"attack": "deepfool"}).meta
    flipped = np.array([mt["flipped"] for mt in metas])
    rel = np.array([mt["relative_l2"] for mt in metas])
    fig = {
        "flip_rate": flipped.mean(),
        "median_relative_l2": float(np.median(rel)),
        "median_linf": float(np.median([mt["linf"] for mt in metas])),
        "median_iterations": float(np.median([mt["iterations"] for mt in metas])),
        "saturated": int(saturated.sum()),
        "flip_rate_saturated": flipped[saturated].mean(),
        "median_relative_l2_saturated": float(np.median(rel[saturated])),
    }
    print(fig)
    assert fig["flip_rate"] >= 0.95, fig
    assert 0 < fig["median_relative_l2"] < 0.1, fig
    assert fig["saturated"] >= 10 and fig["flip_rate_saturated"] >= 0.95, fig
    assert not any("warning" in mt for mt in metas)
