"""The two-generator explainer (Charachon et al.) on the committed binary classifier:
g_s keeps and g_a flips the decision on >= 90 % of held-out images; its relevance mass
inside the object mask is reported next to Grad-CAM's
(figures: `python -m workers.generators.measure generators`)."""
from __future__ import annotations

import pytest
import torch

from schemas.registry import ModelEntry
from workers.explain import applicability
from workers.generators.measure import binary_model, generator_figures
from workers.generators.model import binary_cnn, generators_path
from workers.loading import load_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    m = binary_model()
    if m is None or not generators_path(m.name).exists():
        pytest.skip("binary-shapes-star / generators-shapes-star weights are absent (python -m workers.generators.train)")
    return m


def test_generators_keep_and_flip(model):
    fig = generator_figures(model, n=200)
    print(fig)
    assert fig["similar_keeps"] >= 0.9, fig
    assert fig["adversarial_flips"] >= 0.9, fig
    # the map must say something about the object: more mass inside than a uniform map
    assert fig["mass_inside_object"]["generators"] > fig["mass_inside_object"]["uniform"], fig


def test_generators_refused_for_other_weights(model):
    torch.manual_seed(0)  # same name and architecture, other weights: the hash check refuses
    other = load_model(ModelEntry(name=model.name, architecture="workers.generators.model:binary_cnn", num_classes=2,
                                  input={"size": [64, 64], "mean": [0.5] * 3, "std": [0.25] * 3}), module=binary_cnn(2))
    reason = applicability(other)["adversarial_generators"]
    assert reason and "hash" in reason
    assert applicability(model)["adversarial_generators"] is None
