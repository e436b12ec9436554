"""The figures of docs/perturbation.md:

    python -m workers.generators.measure            # both
    python -m workers.generators.measure deepfool   # DeepFool on the demo model (shapes-cnn)
    python -m workers.generators.measure generators # the two-generator explainer (shapes-star)

- deepfool: on 100 generated images (seed 4242) the attack on the predicted class; the share
  whose prediction flips and the median relative L2 norm ||x_adv - x|| / ||x|| (pixel scale).
- generators: on held-out images never used in training (seed 300), the share where g_s keeps
  and g_a flips the classifier's decision, and the share of relevance mass inside the object
  mask for R = |g_s - g_a| (summed over channels) and for Grad-CAM on the same classifier, next
  to the mask's area (the share a uniform map would get).
"""
from __future__ import annotations

import json
import sys

import numpy as np
import torch



def demo_model():
    from schemas.registry import load_registry
    from workers.loading import load_model

    reg = load_registry()
    e = reg.get("shapes-cnn")
    if not reg.resolve(e.weights).exists():
        return None
    return load_model(e, reg)


def binary_model():
    from schemas.registry import load_registry
    from workers.loading import load_model

    reg = load_registry()
    e = reg.get("shapes-star")
    if not reg.resolve(e.weights).exists():
        return None
    return load_model(e, reg)


def deepfool_figures(model, n: int = 100, seed: int = 4242) -> dict:
    from workers.data.shapes import generate, to_tensor
    from workers.explain import attribute

    x = to_tensor(generate(n, seed)[0])
    with torch.no_grad():
        t = model.module(x).argmax(1)
    metas = []
    for s in range(0, n, 25):
        metas += attribute(model, x[s:s + 25], t[s:s + 25], "adversarial", {"attack": "deepfool"}).meta
    flipped = [m["flipped"] for m in metas]
    rel = [m["relative_l2"] for m in metas]
    return {"images": n, "flip_rate": float(np.mean(flipped)), "median_relative_l2": float(np.median(rel)),
            "median_linf": float(np.median([m["linf"] for m in metas])),
            "median_iterations": float(np.median([m["iterations"] for m in metas]))}


def mass_inside(maps: torch.Tensor, masks: np.ndarray) -> np.ndarray:
    r = maps.clamp_min(0).flatten(1).double()
    mk = torch.from_numpy(masks).flatten(1).double()
    return ((r * mk).sum(1) / r.sum(1).clamp_min(1e-12)).numpy()


def generator_figures(model, n: int = 200, seed: int = 300) -> dict:
    from workers.data.shapes import LABELS
    from workers.explain import attribute
    from workers.generators.train import binary_data

    x, y, masks = binary_data(n, seed, LABELS.index(model.labels[1]))  # labels: [not-<shape>, <shape>]
    with torch.no_grad():
        d = model.module(x).argmax(1)
    att = attribute(model, x, d, "adversarial_generators")
    keep = np.mean([m["similar_keeps"] for m in att.meta])
    flip = np.mean([m["adversarial_flips"] for m in att.meta])
    r = att.maps.sum(1)
    cam = attribute(model, x, d, "gradcam").maps[:, 0]
    mg, mc = mass_inside(r, masks), mass_inside(cam, masks)
    pos = (y == 1).numpy()
    area = masks.reshape(n, -1).mean(1)
    return {"images": n, "classifier_accuracy": float((d == y).float().mean()), "similar_keeps": float(keep),
            "adversarial_flips": float(flip),
            "mass_inside_object": {"generators": float(mg.mean()), "gradcam": float(mc.mean()),
                                   "uniform": float(area.mean())},
            "mass_inside_object_positives": {"generators": float(mg[pos].mean()), "gradcam": float(mc[pos].mean()),
                                             "uniform": float(area[pos].mean())}}


def main(argv: list[str] | None = None) -> None:
    torch.set_num_threads(2)
    what = (argv if argv is not None else sys.argv[1:]) or ["deepfool", "generators"]
    out = {}
    if "deepfool" in what:
        m = demo_model()
        out["deepfool"] = deepfool_figures(m) if m is not None else "workers/weights/shapes-cnn.safetensors missing"
    if "generators" in what:
        m = binary_model()
        out["generators"] = generator_figures(m) if m is not None else "binary-shapes-star weights missing"
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
