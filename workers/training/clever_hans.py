"""The Clever-Hans demo model: ``python -m workers.training.clever_hans``.

As the wolf-vs-husky snow of the survey's §1, the training data carry a shortcut: every
training image of the shapes data set (``workers/training/shapes.py``) has a small watermark in
its top-left corner — a solid ``WM`` x ``WM`` patch whose colour is that of its class
(``PALETTE``) — so the watermark alone predicts the class perfectly. ``ShapesCNN`` is trained
on it briefly with the demo model's training loop (``workers.training.demo_model.fit``, flips off so the
watermark stays in its corner). On test images the accuracy is measured with the watermark
in place, removed, moved to the opposite corner and swapped for another class's watermark:
a model that learned the watermark collapses without it and follows the swapped one.

Writes ``workers/models/weights/clever-hans-cnn.safetensors``, ``clever-hans-cnn.labels.txt`` and
``clever-hans-cnn.json`` (the accuracies); the registry entry is
``workers/models/registry/default.yaml`` (as ``clever-hans-cnn``).

    from workers.training.clever_hans import test_set
    images, labels, object_masks, watermark_masks = test_set(16, seed=3)
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from workers.models import WEIGHTS_DIR
from workers.training.shapes import LABELS, generate

WM = 6  # side of the watermark patch in pixels (64 x 64 images)
OFFSET = 2  # distance of the patch from the image border
# one saturated colour per class (RGB), index = class
PALETTE = np.array(
    [
        [255, 0, 0],
        [0, 255, 0],
        [0, 0, 255],
        [255, 255, 0],
        [255, 0, 255],
        [0, 255, 255],
        [255, 255, 255],
        [0, 0, 0],
        [255, 128, 0],
        [128, 0, 255],
    ],
    np.uint8,
)
CORNERS = ("top_left", "bottom_right")
NAME = "clever-hans-cnn"
TRAIN_SEED, TEST_SEED = 11, 12


def watermark_box(corner: str = "top_left", size: int = 64) -> tuple[int, int, int, int]:
    """(y0, x0, y1, x1) of the patch, end exclusive."""
    if corner == "top_left":
        y0 = x0 = OFFSET
    elif corner == "bottom_right":
        y0 = x0 = size - OFFSET - WM
    else:
        raise ValueError(f"unknown corner {corner!r}")
    return y0, x0, y0 + WM, x0 + WM


def watermark_mask(corner: str = "top_left", size: int = 64) -> np.ndarray:
    m = np.zeros((size, size), bool)
    y0, x0, y1, x1 = watermark_box(corner, size)
    m[y0:y1, x0:x1] = True
    return m


def watermark_area(corner: str = "top_left", size: int = 64, margin: int = 4) -> np.ndarray:
    """The watermark dilated by ``margin`` pixels (clipped to the image): the region a coarse map
    (one Grad-CAM cell of ShapesCNN's 8 x 8 grid is 8 x 8 pixels) can point at."""
    m = np.zeros((size, size), bool)
    y0, x0, y1, x1 = watermark_box(corner, size)
    m[max(0, y0 - margin) : y1 + margin, max(0, x0 - margin) : x1 + margin] = True
    return m


def painter(corner: str = "top_left", shift: int = 0):
    """A ``generate(..., watermark=)`` hook painting class ``(label + shift) % 10``'s patch at ``corner``."""

    def paint(img: np.ndarray, label: int, rng: np.random.Generator) -> np.ndarray:
        y0, x0, y1, x1 = watermark_box(corner, img.shape[0])
        img[y0:y1, x0:x1] = PALETTE[(label + shift) % len(PALETTE)]
        return img

    return paint


def data(n: int, seed: int, condition: str = "watermark") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(images, labels, object masks, watermark masks) for a test condition:
    ``watermark`` (as in training), ``removed``, ``moved`` (opposite corner), ``swapped`` (the patch of
    class label + 1, in place). The watermark mask is where the patch is (empty when removed)."""
    hooks = {"watermark": painter(), "removed": None, "moved": painter("bottom_right"), "swapped": painter(shift=1)}
    if condition not in hooks:
        raise ValueError(f"unknown condition {condition!r}; one of {', '.join(hooks)}")
    images, labels, masks = generate(n, seed, watermark=hooks[condition])
    corner = "bottom_right" if condition == "moved" else "top_left"
    wm = np.broadcast_to(
        watermark_mask(corner, images.shape[1]) if condition != "removed" else np.zeros(images.shape[1:3], bool),
        masks.shape,
    ).copy()
    return images, labels, masks & ~wm, wm


def test_set(n: int, seed: int = TEST_SEED) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Test images as in training (watermark in place): images, labels, object masks, watermark masks."""
    return data(n, seed, "watermark")


def accuracies(model: torch.nn.Module, n: int = 500, seed: int = TEST_SEED) -> dict[str, float]:
    """Accuracy per condition, and for ``swapped`` the share of predictions that follow the watermark."""
    from workers.training.demo_model import predict

    out = {}
    for cond in ("watermark", "removed", "moved", "swapped"):
        x, y, _, _ = data(n, seed, cond)
        pred = predict(model, x)
        out[f"accuracy_{cond}"] = float((pred == y).mean())
        if cond == "swapped":
            out["follows_watermark_swapped"] = float((pred == (y + 1) % len(LABELS)).mean())
    return out


def main(argv: list[str] | None = None) -> dict:
    from workers.models.shapes_cnn import ShapesCNN
    from workers.training.demo_model import fit, save, set_determinism

    ap = argparse.ArgumentParser(prog="python -m workers.training.clever_hans", description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-size", type=int, default=3000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--test-size", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(WEIGHTS_DIR / f"{NAME}.safetensors"))
    args = ap.parse_args(argv)

    set_determinism(args.seed, args.threads)
    t0 = time.time()
    x, y, _, _ = data(args.train_size, TRAIN_SEED, "watermark")
    torch.manual_seed(args.seed)
    model = ShapesCNN(num_classes=len(LABELS))
    fit(model, x, y, epochs=args.epochs, seed=args.seed, flips=False)
    acc = accuracies(model, args.test_size)
    acc.update(
        train_size=args.train_size,
        epochs=args.epochs,
        train_seed=TRAIN_SEED,
        test_seed=TEST_SEED,
        test_size=args.test_size,
        seconds=round(time.time() - t0, 1),
    )
    print(json.dumps(acc, indent=1))
    w, _ = save(model, args.out, LABELS)
    w.with_suffix(".json").write_text(json.dumps(acc, indent=1) + "\n")
    print(f"wrote {w}")
    return acc


if __name__ == "__main__":
    main()
