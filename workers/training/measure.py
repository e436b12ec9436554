"""The figures of docs/perturbation.md:

    python -m workers.training.measure            # both
    python -m workers.training.measure deepfool   # DeepFool on the demo model (shapes-cnn)
    python -m workers.training.measure generators # the two-generator explainer (shapes-star)

- deepfool: on 100 generated images (seed 4242) the attack on the predicted class; the share
  whose prediction flips and the median relative L2 norm ||x_adv - x|| / ||x|| (pixel scale).
- generators: on held-out images never used in training (seed 300), the share where g_s keeps
  and g_a flips the classifier's decision, and the share of relevance mass inside the object
  mask (and within 3 px of it) for R = |g_s - g_a| (summed over channels) and for Grad-CAM on
  the same classifier (its registry layer, features.14), next to the mask's area (the share a
  uniform map would get); per decision: flip/keep rates; the edits' mean L1 / L2 distance to x on
  the [0, 1] pixel scale.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch


def demo_model():
    from schemas.registry import load_registry
    from workers.models.loading import load_model

    reg = load_registry()
    e = reg.get("shapes-cnn")
    if not reg.resolve(e.weights).exists():
        return None
    return load_model(e, reg)


def binary_model():
    from schemas.registry import load_registry
    from workers.models.loading import load_model

    reg = load_registry()
    e = reg.get("shapes-star")
    if not reg.resolve(e.weights).exists():
        return None
    return load_model(e, reg)


def deepfool_figures(model, n: int = 100, seed: int = 4242) -> dict:
    from workers.explain import attribute
    from workers.training.shapes import generate, to_tensor

    x = to_tensor(generate(n, seed)[0])
    with torch.no_grad():
        t = model.module(x).argmax(1)
    metas = []
    for s in range(0, n, 25):
        metas += attribute(model, x[s : s + 25], t[s : s + 25], "adversarial", {"attack": "deepfool"}).meta
    flipped = [m["flipped"] for m in metas]
    rel = [m["relative_l2"] for m in metas]
    return {
        "images": n,
        "flip_rate": float(np.mean(flipped)),
        "median_relative_l2": float(np.median(rel)),
        "median_linf": float(np.median([m["linf"] for m in metas])),
        "median_iterations": float(np.median([m["iterations"] for m in metas])),
    }


def mass_inside(maps: torch.Tensor, masks: np.ndarray) -> np.ndarray:
    r = maps.clamp_min(0).flatten(1).double()
    mk = torch.from_numpy(masks).flatten(1).double()
    return ((r * mk).sum(1) / r.sum(1).clamp_min(1e-12)).numpy()


def generator_figures(model, n: int = 200, seed: int = 300) -> dict:
    """Held-out figures of adversarial_generators on ``model`` (through attribute(), as the service computes
    them): keep/flip rates (overall and per decision), edit sizes, relevance mass inside the object mask
    next to Grad-CAM's (same images, the same decision as target)."""
    from workers.explain import attribute
    from workers.training.generators import binary_data
    from workers.training.shapes import LABELS

    x, y, masks = binary_data(n, seed, LABELS.index(model.labels[1]))  # labels: [not-<shape>, <shape>]
    with torch.no_grad():
        d = model.module(x).argmax(1)
    metas, maps = [], []
    for s in range(0, n, 100):
        att = attribute(model, x[s : s + 100], d[s : s + 100], "adversarial_generators")
        metas += att.meta
        maps.append(att.maps.sum(1))
    r = torch.cat(maps)
    keep = np.array([m["similar_keeps"] for m in metas])
    flip = np.array([m["adversarial_flips"] for m in metas])
    cam = attribute(model, x, d, "gradcam").maps[:, 0]
    mg, mc = mass_inside(r, masks), mass_inside(cam, masks)
    from scipy.ndimage import binary_dilation

    near = np.stack([binary_dilation(mk, iterations=3) for mk in masks])  # the object and 3 px around it
    ng, nc = mass_inside(r, near), mass_inside(cam, near)
    dn = d.numpy()
    pos = (y == 1).numpy()
    area = masks.reshape(n, -1).mean(1)
    mu, sd = model.mean_std()

    def mean(key: str) -> float:
        return float(np.mean([m[key] for m in metas]))

    def mass(sel: np.ndarray) -> dict:
        return {
            "generators": float(mg[sel].mean()),
            "gradcam": float(mc[sel].mean()),
            "uniform": float(area[sel].mean()),
            "images": int(sel.sum()),
        }

    return {
        "images": n,
        "seed": seed,
        "classifier_accuracy": float((d == y).float().mean()),
        "decided_positive": int(dn.sum()),
        "similar_keeps": float(keep.mean()),
        "adversarial_flips": float(flip.mean()),
        "adversarial_flips_per_decision": {model.labels[k]: float(flip[dn == k].mean()) for k in (0, 1)},
        "similar_keeps_per_decision": {model.labels[k]: float(keep[dn == k].mean()) for k in (0, 1)},
        "distance_to_input_pixel_scale": {
            "similar_l1": mean("similar_l1"),
            "similar_l2": mean("similar_l2"),
            "adversarial_l1": mean("adversarial_l1"),
            "adversarial_l2": mean("adversarial_l2"),
            "input_l2": float((x * sd + mu).flatten(1).norm(dim=1).mean()),
        },
        "mass_inside_object": mass(np.ones(n, bool)),
        "mass_inside_object_positives": mass(pos),
        "mass_inside_object_negatives": mass(~pos),
        "mass_within_3px_of_object": {
            "generators": float(ng.mean()),
            "gradcam": float(nc.mean()),
            "uniform": float(near.reshape(n, -1).mean(1).mean()),
        },
    }


def main(argv: list[str] | None = None) -> None:
    torch.set_num_threads(2)
    what = (argv if argv is not None else sys.argv[1:]) or ["deepfool", "generators"]
    out = {}
    if "deepfool" in what:
        m = demo_model()
        out["deepfool"] = (
            deepfool_figures(m) if m is not None else "workers/models/weights/shapes-cnn.safetensors missing"
        )
    if "generators" in what:
        m = binary_model()
        out["generators"] = generator_figures(m) if m is not None else "binary-shapes-star weights missing"
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
