"""Train the grey-scale clinical demo models: ``python -m workers.training.clinical``.

- ``lesion-cnn``: ``whitebox.lesion_cnn`` (BinaryCNN, one input channel) trained on the procedural
  radiograph-like lesion data (``workers/training/lesions.py``): lesion vs no lesion. Half of its
  training images (``LETTER_SHARE``, chosen from the seed, independently of the label) carry a
  laterality letter drawn at random (``marker="random"``), the rest none: it sees the letter as every
  real radiograph shows one, with no label information in it, and learns to ignore it (it is right with
  no letter, a random one, the label's and the swapped one): the control next to the twin.
- ``lesion-cnn-marker`` (``--twin``): its Clever-Hans twin, the same network and loop trained on the
  same kind of data with a burned-in laterality letter whose identity follows the label
  (``marker="label"``); on held-out images with the marker in place, removed and swapped, a model that
  learned the letter collapses without it and follows the swapped one.

Both with the demo model's training loop (``workers.training.demo_model.fit``: AdamW, one-cycle,
deterministic; PyTorch's default initialisation, ``init=False``: the He/zero-head init of the plain
shapes stack leaves this BN network on a plateau for three epochs). Flips: on for ``lesion-cnn`` (the
task is mirror-symmetric), off for the twin (a mirrored letter in the other corner is not its marker).

Writes ``workers/models/weights/<name>.safetensors``, ``<name>.labels.txt`` and ``<name>.json`` (the
measured figures: held-out accuracy, a mean-intensity baseline, and for ``lesion-cnn`` the pointing
game and relevance mass inside the lesion of several methods through ``workers.evaluation.evaluate``;
for both the accuracy per marker condition, and for the twin which methods point at the marker, next to
``lesion-cnn`` on the same images: ``marker_exposure``). ``--measure-only`` recomputes the figures of the
committed weights (and rewrites the JSON, keeping the training run's command and time). The registry
entries are ``workers/models/registry/default.yaml``.

One thread, bit-reproducible: about 2.5 minutes per model on one core of a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from workers.models import WEIGHTS_DIR
from workers.models.lesion_cnn import lesion_cnn
from workers.training.lesions import LABELS, MARKERS, LesionBatch, generate, to_tensor

NAME, TWIN = "lesion-cnn", "lesion-cnn-marker"
TRAIN_SEED, TWIN_TRAIN_SEED = 21, 31  # data seeds of the two training sets
HELDOUT_SEED = 22  # the figures of the JSON files (tests use TEST_SEED)
TEST_SEED = 23
TRAIN_SIZE, EPOCHS = 8000, 6
LETTER_SHARE = 0.5  # share of lesion-cnn's training images with a random laterality letter (the rest: none)
# the methods whose localisation is reported (cheap settings where a method has a cost knob)
LOCALISATION_METHODS: list[dict] = [
    {"name": "gradcam"},
    {"name": "fem"},
    {"name": "saliency"},
    {"name": "integrated_gradients", "params": {"steps": 32}},
    {"name": "lrp"},
    {"name": "occlusion", "params": {"window": 8, "stride": 4}},
    {"name": "deeplift"},
    {"name": "adversarial_generators"},
    {"name": "guided_backprop"},
]
POINTING_TOLERANCE = 2  # px, as docs/demo-model.md (Zhang et al.'s 15 px at 224 px is ~4 px at 64 px)


def images_nhwc(images: np.ndarray) -> np.ndarray:
    """(N, H, W) grey -> (N, H, W, 1): the layout of ``demo_model.fit`` / ``predict``."""
    return np.ascontiguousarray(images[..., None])


def training_batch(marker: str, n: int, seed: int, letter_share: float = LETTER_SHARE) -> LesionBatch:
    """The training images: ``marker="random"``: a share ``letter_share`` of them (which ones drawn from
    ``seed`` alone, independently of the labels) with a random letter, the others without (the same
    images otherwise: the letter is painted last); any other marker: ``generate(n, seed, marker)``."""
    if marker != "random":
        return generate(n, seed, marker=marker)
    plain, lettered = generate(n, seed), generate(n, seed, marker="random")
    chosen = np.zeros(n, bool)
    chosen[np.random.default_rng([seed, 0x1E77]).permutation(n)[: round(letter_share * n)]] = True
    pick = chosen[:, None, None]
    return LesionBatch(
        images=np.where(pick, lettered.images, plain.images),
        labels=plain.labels,
        lesion_masks=plain.lesion_masks,
        marker_masks=lettered.marker_masks & pick,
    )


def train(
    marker: str = "random",
    n: int = TRAIN_SIZE,
    epochs: int = EPOCHS,
    data_seed: int = TRAIN_SEED,
    seed: int = 0,
    threads: int = 1,
    log=print,
) -> torch.nn.Module:
    """A trained ``lesion_cnn`` (deterministic for fixed arguments) on ``training_batch(marker, n, data_seed)``:
    ``"random"`` is ``lesion-cnn``'s data, ``"label"`` the twin's. Flips unless the letter follows the
    label (a mirrored letter in the other corner is not the twin's marker; a random one carries nothing)."""
    from workers.training.demo_model import fit, set_determinism

    set_determinism(seed, threads)
    b = training_batch(marker, n, data_seed)
    model = lesion_cnn(len(LABELS))
    return fit(
        model, images_nhwc(b.images), b.labels, epochs=epochs, seed=seed, init=False, flips=marker != "label", log=log
    )


def loaded(name: str, module: torch.nn.Module | None = None):
    """The registry model ``name`` (default registry), with ``module`` in place of its weights when given."""
    from schemas.registry import load_registry
    from workers.models.loading import load_model

    reg = load_registry()
    entry = reg.get(name)
    if entry is None:
        raise SystemExit(f"{name} is not in the default registry")
    return load_model(entry, reg, module=module)


@torch.no_grad()
def predict(module: torch.nn.Module, images: np.ndarray, batch: int = 250) -> np.ndarray:
    module.eval()
    return np.concatenate(
        [module(to_tensor(images[s : s + batch])).argmax(1).numpy() for s in range(0, len(images), batch)]
    )


def mean_intensity_baseline(train_images, train_labels, test_images, test_labels) -> float:
    """Held-out accuracy of the best threshold (either direction) on the mean intensity, fitted on training images."""
    mt = train_images.reshape(len(train_images), -1).mean(1)
    mh = test_images.reshape(len(test_images), -1).mean(1)
    best, rule = -1.0, (0.0, 1)
    for t in np.unique(mt):
        for sign in (1, -1):
            acc = float((((sign * (mt - t)) > 0).astype(int) == train_labels).mean())
            if acc > best:
                best, rule = acc, (float(t), sign)
    t, sign = rule
    return float((((sign * (mh - t)) > 0).astype(int) == test_labels).mean())


def localisation(model, n: int = 200, seed: int = HELDOUT_SEED, methods: list[dict] | None = None) -> dict:
    """Pointing game (2 px tolerance and strict) and relevance mass accuracy inside the lesion mask, on the
    ``n`` first lesion-positive images of ``generate(2 n, seed)``, target = lesion; next to chance (the
    mean share of the image the dilated / plain mask covers)."""
    from scipy.ndimage import binary_dilation

    import workers.evaluation.metrics as M
    from workers.errors import MethodError
    from workers.evaluation.evaluate import aggregate, evaluate_method

    b = generate(2 * n, seed)
    pos = b.labels == 1
    x = to_tensor(b.images[pos][:n])
    masks = b.lesion_masks[pos][:n]
    yy, xx = np.mgrid[-POINTING_TOLERANCE : POINTING_TOLERANCE + 1, -POINTING_TOLERANCE : POINTING_TOLERANCE + 1]
    disc = (yy * yy + xx * xx) <= POINTING_TOLERANCE**2
    dil = np.stack([binary_dilation(m, structure=disc) for m in masks])
    metrics = [
        ("pointing_game", {"tolerance": POINTING_TOLERANCE}),
        ("relevance_mass_accuracy", {}),
        ("relevance_rank_accuracy", {}),
    ]
    targets = torch.ones(len(x), dtype=torch.long)
    out: dict = {"images": int(len(x)), "seed": seed, "target": "lesion", "methods": {}}
    for m in methods or LOCALISATION_METHODS:
        try:  # the maps once per method; the metrics as /v1/evaluate computes them
            vals, maps = evaluate_method(model, x, targets, m["name"], dict(m.get("params", {})), metrics, masks)
        except MethodError as e:
            out["methods"][m["name"]] = {"error": str(getattr(e, "detail", None) or e)}
            continue
        mnp = maps.numpy()
        out["methods"][m["name"]] = {
            "pointing_game": aggregate(vals["pointing_game"]),
            "pointing_game_strict": aggregate([M.pointing_game(mnp[i], masks[i]) for i in range(len(x))]),
            "relevance_mass_accuracy": aggregate(vals["relevance_mass_accuracy"]),
            "relevance_rank_accuracy": aggregate(vals["relevance_rank_accuracy"]),
        }
    out["chance"] = {"pointing_game": float(dil.reshape(len(x), -1).mean()), "relevance_mass": float(masks.mean())}
    return out


def marker_figures(
    module: torch.nn.Module, n: int = 1000, seed: int = HELDOUT_SEED, train_seed: int = TRAIN_SEED
) -> dict:
    """Accuracy of ``module`` on ``generate(n, seed, marker)`` for every marker condition (``MARKERS``), the
    mean-intensity baseline of each (fitted on ``generate(2000, train_seed, marker)``), and for ``swapped``
    the share of the predictions that follow the letter (= 1 - label)."""
    out: dict = {"images": n, "seed": seed, "accuracy": {}, "mean_intensity_baseline_accuracy": {}}
    for cond in MARKERS:
        b = generate(n, seed, marker=cond)
        p = predict(module, b.images)
        out["accuracy"][cond] = float((p == b.labels).mean())
        t = generate(2000, train_seed, marker=cond)
        out["mean_intensity_baseline_accuracy"][cond] = mean_intensity_baseline(t.images, t.labels, b.images, b.labels)
        if cond == "swapped":
            out["follows_swapped_marker"] = float((p == 1 - b.labels).mean())
    return out


MARKER_TOLERANCE = 3  # px: the letter is 5 x 7 px, one cell of the 8 x 8 Grad-CAM layer is 8 x 8 px


def marker_exposure(model, n: int = 200, seed: int = HELDOUT_SEED, methods: list[dict] | None = None) -> dict:
    """Which methods expose the marker: on ``generate(n, seed, marker="label")`` (both labels; target = the
    model's decision), per method the share of maps whose maximum lies within ``MARKER_TOLERANCE`` px of
    the letter (pointing game on the marker) and the share of their positive relevance within 2 px of it;
    chance = the mean share of the image those regions cover. Run on the twin and on ``lesion-cnn``
    (the control: the same images, a model trained with letters that carry no label information);
    ``exposure_contrast`` compares the two."""
    from scipy.ndimage import binary_dilation

    import workers.evaluation.metrics as M
    from workers.errors import MethodError
    from workers.evaluation.evaluate import aggregate, evaluate_method

    b = generate(n, seed, marker="label")
    x = to_tensor(b.images)
    near = np.stack([binary_dilation(m, iterations=2) for m in b.marker_masks])
    t = MARKER_TOLERANCE
    yy, xx = np.mgrid[-t : t + 1, -t : t + 1]
    zone = np.stack([binary_dilation(m, structure=(yy * yy + xx * xx) <= t * t) for m in b.marker_masks])
    with torch.no_grad():
        targets = model.module(x).argmax(1)
    out: dict = {"images": n, "seed": seed, "target": "predicted", "methods": {}}
    for m in methods or LOCALISATION_METHODS:
        metric = [("pointing_game", {"tolerance": t})]
        try:
            vals, maps = evaluate_method(
                model, x, targets, m["name"], dict(m.get("params", {})), metric, b.marker_masks
            )
        except MethodError as e:
            out["methods"][m["name"]] = {"error": str(getattr(e, "detail", None) or e)}
            continue
        mnp = maps.numpy()
        out["methods"][m["name"]] = {
            "pointing_game_marker": aggregate(vals["pointing_game"]),
            "relevance_mass_near_marker": aggregate(
                [M.relevance_mass_accuracy(np.clip(mnp[i], 0, None), near[i]) for i in range(n)]
            ),
        }
    out["chance"] = {"pointing_game_marker": float(zone.mean()), "relevance_mass_near_marker": float(near.mean())}
    return out


# a method exposes the twin's shortcut when, on the same images, the twin's maps peak on the letter in at
# least EXPOSE_POINTING_MARGIN more of the images than the control's, and put at least EXPOSE_MASS_RATIO
# times the control's share of their positive relevance near it
EXPOSE_POINTING_MARGIN, EXPOSE_MASS_RATIO = 0.5, 2.0


def exposure_contrast(twin: dict, control: dict) -> dict:
    """Per method of two ``marker_exposure`` results (twin, control; the same images): the twin's minus
    the control's pointing game on the marker, the ratio of their relevance mass near it, and whether
    that exposes the shortcut (the rule above); methods that ran on one model only are reported as such."""
    out: dict = {"pointing_margin": EXPOSE_POINTING_MARGIN, "mass_ratio": EXPOSE_MASS_RATIO, "methods": {}}
    for name in twin["methods"]:
        t, c = twin["methods"][name], control["methods"].get(name, {"error": "not run"})
        if "error" in t or "error" in c:
            out["methods"][name] = {
                "exposes": None,
                "ran_on": [k for k, v in (("twin", t), ("control", c)) if "error" not in v],
            }
            continue
        diff = t["pointing_game_marker"] - c["pointing_game_marker"]
        ratio = t["relevance_mass_near_marker"] / max(c["relevance_mass_near_marker"], 1e-12)
        out["methods"][name] = {
            "pointing_game_difference": diff,
            "mass_ratio": ratio,
            "exposes": bool(diff >= EXPOSE_POINTING_MARGIN and ratio >= EXPOSE_MASS_RATIO),
        }
    out["exposing"] = [k for k, v in out["methods"].items() if v["exposes"]]
    return out


def accuracy_figures(module: torch.nn.Module, marker: str, n: int, seed: int, train_seed: int) -> dict:
    h = generate(n, seed, marker=marker)
    acc = float((predict(module, h.images) == h.labels).mean())
    t = generate(2000, train_seed, marker=marker)
    return {
        "heldout_accuracy": acc,
        "heldout_images": n,
        "heldout_seed": seed,
        "mean_intensity_baseline_accuracy": mean_intensity_baseline(t.images, t.labels, h.images, h.labels),
    }


def save_model(module: torch.nn.Module, name: str, out: Path) -> None:
    from workers.training.demo_model import save

    save(module, out / f"{name}.safetensors", LABELS)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m workers.training.clinical", description=__doc__.split("\n\n")[0])
    ap.add_argument("--twin", action="store_true", help="train lesion-cnn-marker (the Clever-Hans twin) instead")
    ap.add_argument("--measure-only", action="store_true", help="recompute the figures of the committed weights")
    ap.add_argument("--train-size", type=int, default=TRAIN_SIZE)
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    ap.add_argument("--heldout-size", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--min-accuracy", type=float, default=0.95, help="refuse to write weights below this")
    ap.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.time()
    name = TWIN if a.twin else NAME
    marker = "label" if a.twin else "random"  # training data (training_batch)
    heldout_marker = "label" if a.twin else "none"  # the headline held-out figure
    train_seed = TWIN_TRAIN_SEED if a.twin else TRAIN_SEED
    if a.measure_only:
        model = loaded(name)
        module = model.module
    else:
        module = train(marker, a.train_size, a.epochs, train_seed, threads=a.threads)
    train_s = time.time() - t0
    figs = {
        "model": name,
        "command": "python -m workers.training.clinical " + " ".join(argv if argv is not None else sys.argv[1:]),
        "train_images": a.train_size,
        "train_seed": train_seed,
        "train_marker": marker,
        **({} if a.twin else {"train_letter_share": LETTER_SHARE}),
        "epochs": a.epochs,
        **accuracy_figures(module, heldout_marker, a.heldout_size, HELDOUT_SEED, train_seed),
    }
    print(f"{name}: held-out accuracy {figs['heldout_accuracy']:.4f}; training {train_s:.0f} s", flush=True)
    if figs["heldout_accuracy"] < a.min_accuracy:
        raise SystemExit(f"held-out accuracy {figs['heldout_accuracy']:.4f} < {a.min_accuracy}: weights not written")
    if not a.measure_only:
        save_model(module, name, a.out)
    model = loaded(name, module)
    figs["markers"] = marker_figures(module, train_seed=train_seed)
    print(f"{name}: accuracy per marker {figs['markers']['accuracy']}", flush=True)
    if a.twin:
        twin_e, control_e = marker_exposure(model), marker_exposure(loaded(NAME))
        figs["marker_exposure"] = {
            "lesion-cnn-marker": twin_e,
            "lesion-cnn": control_e,
            "contrast": exposure_contrast(twin_e, control_e),
        }
    else:
        figs["localisation"] = localisation(model)
    figs["seconds"] = {"training": round(train_s, 1), "total": round(time.time() - t0, 1)}
    path = a.out / f"{name}.json"
    if a.measure_only and path.exists():  # the training run's command and time stay
        old = json.loads(path.read_text())
        figs["command"], figs["seconds"] = old.get("command", figs["command"]), old.get("seconds", figs["seconds"])
    path.write_text(json.dumps(figs, indent=2) + "\n")
    print(json.dumps(figs, indent=2))
    return figs


if __name__ == "__main__":
    main()
