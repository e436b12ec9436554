"""The demo model (issue 2, item 3): the procedural shapes data set and the committed, trained
``shapes-cnn``, loaded through the bundled registry exactly as the service loads it.

- the generator is deterministic and its masks are the objects;
- held-out accuracy on freshly generated images (a seed training never used) >= 0.97, through the
  service's own preprocessing (PIL image -> LoadedModel.preprocess);
- the pointing game on 200 fresh images: the map's argmax lies within 2 px (Euclidean) of the
  object mask, i.e. inside the mask dilated by 2 px. Every method must beat the chance level (the
  dilated masks' mean area fraction) by far, and stay above the floors measured on the committed
  weights (FLOORS); issue 2's target, Grad-CAM and FEM >= 0.90, is asserted.

Run ``pytest -s tests/test_demo_model.py`` to see the figures.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import binary_dilation, distance_transform_edt

from schemas.registry import load_registry
from workers.explain import attribute
from workers.models.loading import load_model
from workers.training.shapes import LABELS, generate, to_tensor

ACCURACY_SEED, POINTING_SEED = 1001, 2002  # training uses 1 (train) and 2 (held-out)
TOLERANCE_PX = 2.0
# the committed weights measure gradcam 0.985 / fem 0.975 / saliency 0.915 (see docs/demo-model.md);
# floors a few points below, so a regression of the model or of the methods fails
FLOORS = {"gradcam": 0.93, "fem": 0.93, "saliency": 0.85}
ISSUE_TARGET = 0.90  # issue 2: Grad-CAM and FEM


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    reg = load_registry()
    entry = reg.get("shapes-cnn")
    assert entry is not None, "the bundled registry must serve shapes-cnn"
    return load_model(entry, reg)


# ---- the data set ------------------------------------------------------------------------------
def test_generator_is_deterministic():
    a = generate(30, seed=123)
    b = generate(30, seed=123)
    for u, v in zip(a, b):
        assert u.dtype == v.dtype and np.array_equal(u, v)
    images, labels, masks = a
    assert images.shape == (30, 64, 64, 3) and images.dtype == np.uint8
    assert labels.shape == (30,) and labels.dtype == np.int64
    assert masks.shape == (30, 64, 64) and masks.dtype == bool
    # image i depends on (seed, i) only: a shorter run is a prefix
    p = generate(12, seed=123)
    assert np.array_equal(p[0], images[:12]) and np.array_equal(p[1], labels[:12])
    # every block of ten holds each class once
    assert sorted(np.bincount(labels, minlength=len(LABELS)).tolist()) == [3] * len(LABELS)
    # another seed gives other images
    assert not np.array_equal(generate(30, seed=124)[0], images)


def test_generator_hook_leaves_base_images_alone():
    def mark(img, label, rng):
        img[:2, :2] = 255
        return img

    base = generate(10, seed=5)[0]
    marked = generate(10, seed=5, watermark=mark)[0]
    assert (marked[:, :2, :2] == 255).all()
    assert np.array_equal(marked[:, 2:], base[:, 2:]) and np.array_equal(marked[:, :2, 2:], base[:, :2, 2:])


def test_masks_cover_the_object():
    images, labels, masks = generate(100, seed=77)
    img = images.astype(np.float32)
    for i in range(len(images)):
        m = masks[i]
        assert m.sum() >= 100, f"image {i}: mask of {m.sum()} px"
        # the object is one colour (plus shading and noise): most mask pixels lie close to
        # the median colour of the mask ...
        col = np.median(img[i][m], axis=0)
        near = np.linalg.norm(img[i] - col, axis=-1) < 70
        assert near[m].mean() > 0.85, f"image {i}: mask pixels are not one object"
        # ... and the 2-px ring just outside the mask does not (the object ends where the mask does)
        ring = binary_dilation(m, iterations=2) & ~m
        assert near[ring].mean() < 0.25, f"image {i}: the object extends past its mask"
        # the mask lies inside the image with the object entirely visible
        assert not (m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any())


# ---- the model ---------------------------------------------------------------------------------
def test_registry_labels_match_the_data_set(model):
    assert model.labels == LABELS
    assert model.entry.target_layer == "features.10" and model.default_layer == "features.10"
    assert model.layers["features.10"].shape[1:] == (8, 8)


def test_held_out_accuracy(model):
    images, labels, _ = generate(500, seed=ACCURACY_SEED)
    # the service's preprocessing path: PIL image -> resize (no-op) -> normalise with the registry's mean/std
    x = model.preprocess([Image.fromarray(im) for im in images])
    assert torch.allclose(x, to_tensor(images), atol=1e-6)
    with torch.no_grad():
        pred = model.module(x).argmax(1).numpy()
    acc = float((pred == labels).mean())
    print(f"\nshapes-cnn held-out accuracy: {acc:.4f} (500 images, seed {ACCURACY_SEED})")
    assert acc >= 0.97


def pointing_hits(maps: np.ndarray, masks: np.ndarray, tolerance: float) -> np.ndarray:
    """maps (N, H, W): hit if the (first) argmax lies within ``tolerance`` px of the mask."""
    hits = []
    for r, m in zip(maps, masks):
        y, x = np.unravel_index(np.argmax(r), r.shape)
        hits.append(distance_transform_edt(~m)[y, x] <= tolerance)
    return np.array(hits)


@pytest.fixture(scope="module")
def pointing(model):
    n = 200
    images, labels, masks = generate(n, seed=POINTING_SEED)
    x = to_tensor(images)
    targets = torch.from_numpy(labels)
    chance = float(np.mean([(distance_transform_edt(~m) <= TOLERANCE_PX).mean() for m in masks]))
    figures = {}
    for name in ("gradcam", "fem", "saliency"):
        a = attribute(model, x, targets, name).maps.detach()
        assert a.shape[0] == n and a.shape[-2:] == (64, 64)
        r = a.abs().amax(1) if name == "saliency" else a[:, 0]  # saliency: max over channels of |grad|
        figures[name] = float(pointing_hits(r.numpy(), masks, TOLERANCE_PX).mean())
        figures[name + "_strict"] = float(pointing_hits(r.numpy(), masks, 0.0).mean())
    print(
        f"\npointing game on {n} images (seed {POINTING_SEED}), target = true label, "
        f"hit = argmax within {TOLERANCE_PX:g} px of the mask (strict: inside it); "
        f"chance {chance:.3f}"
    )
    for name in ("gradcam", "fem", "saliency"):
        print(f"  {name:9s} {figures[name]:.3f}   strict {figures[name + '_strict']:.3f}")
    figures["chance"] = chance
    return figures


def test_pointing_game(pointing):
    for name, floor in FLOORS.items():
        assert pointing[name] > 2 * pointing["chance"], name
        assert pointing[name] >= floor, f"{name}: pointing game {pointing[name]:.3f} < {floor}"


def test_pointing_game_meets_issue_target(pointing):
    for name in ("gradcam", "fem"):
        assert pointing[name] >= ISSUE_TARGET, f"{name}: pointing game {pointing[name]:.3f} < {ISSUE_TARGET}"
