"""The two-generator explainer (Charachon et al.) on the committed binary classifier and the
committed generators (workers/models/weights/generators-shapes-star.safetensors):

- on 200 held-out images (seed 300, never used in training: train seed 100, report seed 200)
  g_s keeps and g_a flips the classifier's decision on >= 90 %, in BOTH directions
  (star -> not-star and not-star -> star), with edits that stay small;
- the keep/flip flags of the method's metadata are checked against an independent forward
  pass of the classifier on generators run outside the method;
- the map is |g_s - g_a| of those generators, and its relevance mass inside the object mask
  beats a uniform map's (Grad-CAM's figure is reported next to it by
  `python -m workers.training.measure generators`);
- other classifier weights (hash mismatch) are refused.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from schemas.registry import ModelEntry
from workers.explain import applicability, attribute
from workers.models.binary_cnn import binary_cnn
from workers.models.generators import generators_path, load_generators
from workers.models.loading import load_model
from workers.training.measure import binary_model, generator_figures

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    m = binary_model()
    assert m is not None, "workers/models/weights/binary-shapes-star.safetensors is committed"
    assert generators_path(m.name).exists(), "workers/models/weights/generators-shapes-star.safetensors is committed"
    return m


@pytest.fixture(scope="module")
def figures(model):
    fig = generator_figures(model, n=200)
    print(fig)
    return fig


def test_generators_keep_and_flip_both_directions(figures):
    fig = figures
    assert fig["similar_keeps"] >= 0.9, fig
    assert fig["adversarial_flips"] >= 0.9, fig
    for label, rate in fig["adversarial_flips_per_decision"].items():
        assert rate >= 0.9, (label, fig)
    for label, rate in fig["similar_keeps_per_decision"].items():
        assert rate >= 0.9, (label, fig)
    assert min(fig["decided_positive"], fig["images"] - fig["decided_positive"]) >= 50  # both directions tested


def test_generators_edits_are_small(figures):
    dist = figures["distance_to_input_pixel_scale"]
    assert dist["similar_l1"] < 0.02, dist  # g_s reproduces x
    assert dist["adversarial_l1"] < 0.1, dist  # g_a: a mean change under 10 % of the pixel range
    assert dist["adversarial_l2"] < 0.5 * dist["input_l2"], dist


def test_generators_map_inside_object(figures):
    m = figures["mass_inside_object"]
    assert m["generators"] > 1.5 * m["uniform"], figures  # clearly more than a uniform map's share
    assert 0.0 <= m["gradcam"] <= 1.0


def test_metadata_and_map_match_independent_run(model):
    from workers.training.generators import binary_data

    x, _, _ = binary_data(16, 301, 3)
    with torch.no_grad():
        d = model.module(x).argmax(1)
    att = attribute(model, x, 1 - d, "adversarial_generators")  # the target does not matter: the decision does
    pair, meta = load_generators(generators_path(model.name))
    lo, hi = model.input_bounds()
    with torch.no_grad():
        gs, ga = pair(x, lo, hi, d)
        ks = (model.module(gs).argmax(1) == d).numpy()
        fa = (model.module(ga).argmax(1) != d).numpy()
    np.testing.assert_array_equal([m["similar_keeps"] for m in att.meta], ks)
    np.testing.assert_array_equal([m["adversarial_flips"] for m in att.meta], fa)
    assert [m["decision"] for m in att.meta] == d.tolist()
    torch.testing.assert_close(att.maps, (gs - ga).abs(), atol=1e-5, rtol=0)
    assert len(meta["classifier_sha256"]) == 64


def test_generators_refused_for_other_weights(model):
    torch.manual_seed(0)  # same name and architecture, other weights: the hash check refuses
    other = load_model(
        ModelEntry(
            name=model.name,
            architecture="whitebox.binary_cnn",
            num_classes=2,
            input={"size": [64, 64], "mean": [0.5] * 3, "std": [0.25] * 3},
        ),
        module=binary_cnn(2),
    )
    reason = applicability(other)["adversarial_generators"]
    assert reason and "hash" in reason
    assert applicability(model)["adversarial_generators"] is None
