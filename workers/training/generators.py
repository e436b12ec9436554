"""Train the two generators of ``adversarial_generators`` (Charachon et al., survey §6 Eq. 27) for a
binary classifier, and optionally the classifier itself.

    python -m workers.training.generators                       # generators for the committed shapes-star classifier
    python -m workers.training.generators --train-classifier    # classifier first (overwrites binary-<model>)
    python -m workers.training.generators --model lesion-cnn    # generators for the grey-scale lesion classifier

The classifier and its data are a ``Task`` (``TASKS``, by registry name): ``lesion-cnn`` is the
1-channel clinical demo model (``workers/training/lesions.py`` data, weights from
``python -m workers.training.clinical``; horizontal flips only); any other name is a shapes task
(``--positive`` vs the rest, ``binary-<model>`` weights) exactly as before.

1. (``--train-classifier``) A binary classifier on the procedural shapes (``--positive`` shape vs
   the rest, half of the images positive): ``binary_cnn``, Adam, cross-entropy. Writes
   ``binary-<model>.safetensors`` and its labels file (the registry entry ``shapes-star`` points there).
2. The generator pair against the frozen classifier f, d(x) = f's decision on x, z = f's logits:
     g_s: w_rec * L1(g_s(x), x) + hinge(kappa - (z_d - z_{1-d}))                (similar: keep d)
     g_a: hinge(kappa - (z_{1-d} - z_d)) + w_sim * L1(g_a(x), g_s(x)) + w_tv * TV(g_a(x) - g_s(x))
                                                                               (adversarial: flip d)
   The hinges are averaged per decision and then over the two decisions (the hard direction, here
   not-star -> star, weighs as much as the easy one); batches hold a share ``--share-negative`` of
   images decided 0; g_a has one decoder per direction (picked by d), the encoder is shared; edits
   are residuals bounded by ``--bound`` (tanh) and clamped to the input box; flips and quarter
   turns augment the batches. No discriminator (kept small enough for a CPU); the similarity and
   total-variation terms keep g_a's edit small and smooth.
   Writes ``generators-<model>.safetensors`` with the classifier's parameter hash and the command.

Everything is seeded; data: workers/training/shapes.py (train seed 100, held-out report seed 200;
tests and ``python -m workers.training.measure`` use seed 300). With the defaults: 6-13 minutes
on one thread of a shared 2-core machine; the run is bit-reproducible with one thread.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from workers.models import WEIGHTS_DIR
from workers.models.binary_cnn import binary_cnn
from workers.models.generators import GeneratorPair, fingerprint, save_generators
from workers.training.shapes import LABELS, generate, to_tensor

MEAN, STD = 0.5, 0.25
LO, HI = (0 - MEAN) / STD, (1 - MEAN) / STD
TRAIN_SEED, HELDOUT_SEED = 100, 200


def binary_data(n: int, seed: int, positive: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """n images, half of class ``positive``, the rest spread over the other shapes; labels 1 = positive."""
    rng = np.random.default_rng([seed, 7])
    others = [c for c in range(len(LABELS)) if c != positive]
    classes = np.where(np.arange(n) % 2 == 0, positive, rng.choice(others, n))
    rng.shuffle(classes)
    images, labels, masks = generate(n, seed, classes=classes)
    return to_tensor(images, MEAN, STD), torch.from_numpy((labels == positive).astype(np.int64)), masks


def tv(d: torch.Tensor) -> torch.Tensor:
    return (d[..., 1:, :] - d[..., :-1, :]).abs().mean() + (d[..., :, 1:] - d[..., :, :-1]).abs().mean()


def train_classifier(x: torch.Tensor, y: torch.Tensor, epochs: int, batch: int, log) -> torch.nn.Module:
    torch.manual_seed(0)
    net = binary_cnn(2)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(1)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=3e-3, total_steps=epochs * ((len(x) + batch - 1) // batch), pct_start=0.2
    )
    for ep in range(epochs):
        net.train()
        perm = torch.randperm(len(x), generator=g)
        tot, correct = 0.0, 0
        for s in range(0, len(x), batch):
            idx = perm[s : s + batch]
            xb = x[idx]
            flip = torch.rand(len(idx), generator=g) < 0.5  # horizontal flips: shapes stay shapes
            xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(-1), xb)
            out = net(xb)
            loss = F.cross_entropy(out, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(idx)
            correct += int((out.argmax(1) == y[idx]).sum())
        log(f"classifier epoch {ep + 1}/{epochs}: loss {tot / len(x):.4f} train acc {correct / len(x):.3f}")
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def margin_loss(logits: torch.Tensor, d: torch.Tensor, kappa: float) -> torch.Tensor:
    """Hinge on the logit margin towards the other class, averaged per direction and then over the
    directions present (class-balanced: the hard direction weighs as much as the easy one).

    m = z_{1-d} - z_d; loss = relu(kappa - m): zero once the decision is flipped by at least kappa."""
    m = logits.gather(1, (1 - d)[:, None])[:, 0] - logits.gather(1, d[:, None])[:, 0]
    h = F.relu(kappa - m)
    parts = [h[d == k].mean() for k in (0, 1) if bool((d == k).any())]
    return torch.stack(parts).mean()


def balanced_batches(decision: torch.Tensor, batch: int, steps: int, g: torch.Generator, share0: float = 0.5):
    """``steps`` index batches, a share ``share0`` of images decided 0 and the rest decided 1 (cycling
    through a fresh permutation of each group)."""
    groups = [torch.nonzero(decision == k)[:, 0] for k in (0, 1)]
    perms = [grp[torch.randperm(len(grp), generator=g)] for grp in groups]
    pos = [0, 0]
    n0 = int(round(batch * share0))
    sizes = (n0, batch - n0)
    for _ in range(steps):
        out = []
        for k in (0, 1):
            if pos[k] + sizes[k] > len(perms[k]):
                perms[k] = groups[k][torch.randperm(len(groups[k]), generator=g)]
                pos[k] = 0
            out.append(perms[k][pos[k] : pos[k] + sizes[k]])
            pos[k] += sizes[k]
        yield torch.cat(out)


def train_generators(
    net: torch.nn.Module,
    x: torch.Tensor,
    steps: int,
    batch: int,
    w_rec: float,
    w_sim: float,
    w_tv: float,
    kappa: float,
    bound: float,
    width: int,
    lr: float,
    log,
    w_sim_start: float | None = None,
    share0: float = 0.5,
    augment: bool | str = True,
) -> GeneratorPair:
    """Both generators against the frozen classifier ``net`` (decision d = argmax on x):

    - g_s: w_rec * L1(g_s(x), x) + margin(f(g_s(x)), keep d)
    - g_a: margin(f(g_a(x)), flip d) + w_sim * L1(g_a(x), g_s(x)) + w_tv * TV(g_a(x) - g_s(x))

    margin: class-balanced hinge on the logit margin (``margin_loss``; for g_s towards d itself);
    batches hold a share ``share0`` of images decided 0 (more for the harder direction). The similarity
    weight ramps linearly from ``w_sim_start`` to ``w_sim`` over the first half of the steps (find
    flipping edits first, then shrink them). ``augment``: random horizontal flips and quarter turns of
    each batch (``"hflip"``: flips only; the decision is recomputed on the augmented images)."""
    w_sim_start = w_sim if w_sim_start is None else w_sim_start
    torch.manual_seed(2)
    pair = GeneratorPair(channels=x.shape[1], width=width, bound=bound)
    opt = torch.optim.Adam(pair.parameters(), lr=lr)
    lo = torch.full((1, x.shape[1], 1, 1), LO)
    hi = torch.full((1, x.shape[1], 1, 1), HI)
    with torch.no_grad():
        decision = torch.cat([net(x[s : s + 256]).argmax(1) for s in range(0, len(x), 256)])
    log(
        f"decisions on the training images: {int((decision == 1).sum())} positive, "
        f"{int((decision == 0).sum())} negative"
    )
    g = torch.Generator().manual_seed(3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    every = max(1, steps // 10)
    keep = torch.zeros(2)
    flip = torch.zeros(2)
    cnt = torch.zeros(2)
    pair.train()
    for it, idx in enumerate(balanced_batches(decision, batch, steps, g, share0)):
        ws = w_sim_start + (w_sim - w_sim_start) * min(1.0, it / max(1, steps // 2))
        xb, d = x[idx], decision[idx]
        if augment:  # the shapes' classes do not change under flips and quarter turns (nor, mostly, the decision)
            flip_h = torch.rand(len(idx), generator=g) < 0.5
            xb = torch.where(flip_h.view(-1, 1, 1, 1), xb.flip(-1), xb)
            if augment != "hflip":
                xb = torch.rot90(xb, int(torch.randint(4, (1,), generator=g)), dims=(-2, -1))
            with torch.no_grad():
                d = net(xb).argmax(1)
        gs, ga = pair(xb, lo, hi, d)
        ls, la = net(gs), net(ga)
        # g_s: margin_loss with the roles swapped = hinge on z_d - z_{1-d} (keep d by kappa)
        loss_s = w_rec * (gs - xb).abs().mean() + margin_loss(ls, 1 - d, kappa)
        diff = ga - gs.detach()
        loss_a = margin_loss(la, d, kappa) + ws * diff.abs().mean() + w_tv * tv(diff)
        loss = loss_s + loss_a
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            for k in (0, 1):
                sel = d == k
                keep[k] += float((ls.argmax(1)[sel] == k).sum())
                flip[k] += float((la.argmax(1)[sel] != k).sum())
                cnt[k] += float(sel.sum())
        if (it + 1) % every == 0 or it + 1 == steps:
            log(
                f"generators step {it + 1}/{steps}: loss {float(loss.detach()):.4f} (s {float(loss_s.detach()):.3f}, "
                f"a {float(loss_a.detach()):.3f}) similar keeps {(keep / cnt).tolist()} adversarial flips "
                f"{(flip / cnt).tolist()} (per decision 0/1) |ga-x| {float((ga - xb).abs().mean()):.4f}"
            )
            keep.zero_(), flip.zero_(), cnt.zero_()
    pair.eval()
    return pair


def distances(x: torch.Tensor, g: torch.Tensor) -> dict:
    """Mean L1 per element and mean per-image L2 of g - x, and the mean relative L2 ||g - x|| / ||x||, all on the
    [0, 1] pixel scale."""
    dx = (g - x) * STD
    xp = x * STD + MEAN
    l2 = dx.flatten(1).norm(dim=1)
    return {
        "l1_per_element": float(dx.abs().mean()),
        "l2": float(l2.mean()),
        "relative_l2": float((l2 / xp.flatten(1).norm(dim=1)).mean()),
    }


def evaluate(net: torch.nn.Module, pair: GeneratorPair, x: torch.Tensor) -> dict:
    """Keep / flip rates (overall and per decision) and distances of g_s and g_a to x."""
    lo = torch.full((1, x.shape[1], 1, 1), LO)
    hi = torch.full((1, x.shape[1], 1, 1), HI)
    with torch.no_grad():
        d = torch.cat([net(x[s : s + 256]).argmax(1) for s in range(0, len(x), 256)])
        gs, ga = zip(*(pair(x[s : s + 256], lo, hi, d[s : s + 256]) for s in range(0, len(x), 256)))
        gs, ga = torch.cat(gs), torch.cat(ga)
        ks = net(gs).argmax(1) == d
        fa = net(ga).argmax(1) != d
    return {
        "images": len(x),
        "decided_positive": int((d == 1).sum()),
        "similar_keeps": float(ks.float().mean()),
        "adversarial_flips": float(fa.float().mean()),
        "adversarial_flips_per_decision": {str(k): float(fa[d == k].float().mean()) for k in (0, 1)},
        "similar_keeps_per_decision": {str(k): float(ks[d == k].float().mean()) for k in (0, 1)},
        "similar_distance": distances(x, gs),
        "adversarial_distance": distances(x, ga),
    }


@dataclass(frozen=True)
class Task:
    """A binary classifier the generators are trained for, and its data.

    ``data(n, seed)`` -> (normalised images (N, C, H, W), labels (N,) 1 = positive, masks (N, H, W) of the
    positive evidence); ``architecture()`` -> the untrained network of the weights ``classifier_path``;
    ``augment``: the generator batches' augmentation (``train_generators``)."""

    model: str
    labels: tuple[str, str]
    data: Callable[[int, int], tuple[torch.Tensor, torch.Tensor, np.ndarray]]
    architecture: Callable[[], torch.nn.Module]
    classifier_path: Path
    train_seed: int
    heldout_seed: int
    augment: bool | str = True
    what: str = ""  # the log's name of the task
    trainable: bool = True  # --train-classifier (the shapes classifier); else trained elsewhere


def shapes_task(model: str, positive: str, out: Path) -> Task:
    pos = LABELS.index(positive)
    return Task(
        model=model,
        labels=(f"not-{positive}", positive),
        data=lambda n, seed: binary_data(n, seed, pos),
        architecture=lambda: binary_cnn(2),
        classifier_path=out / f"binary-{model}.safetensors",
        train_seed=TRAIN_SEED,
        heldout_seed=HELDOUT_SEED,
        what=f"{positive} vs rest",
    )


LESION_TRAIN_SEED, LESION_HELDOUT_SEED = 121, 122  # tests use 123


def lesion_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    from workers.training.lesions import generate as generate_lesions
    from workers.training.lesions import to_tensor as lesion_tensor

    b = generate_lesions(n, seed)
    return lesion_tensor(b.images, MEAN, STD), torch.from_numpy(b.labels), b.lesion_masks


def lesion_task(out: Path) -> Task:
    from workers.models.lesion_cnn import lesion_cnn
    from workers.training.lesions import LABELS as LESION_LABELS

    return Task(
        model="lesion-cnn",
        labels=(LESION_LABELS[0], LESION_LABELS[1]),
        data=lesion_data,
        architecture=lambda: lesion_cnn(2),
        classifier_path=out / "lesion-cnn.safetensors",
        train_seed=LESION_TRAIN_SEED,
        heldout_seed=LESION_HELDOUT_SEED,
        augment="hflip",  # a chest is mirrored left-right, not turned
        what="lesion vs no-lesion",
        trainable=False,  # python -m workers.training.clinical
    )


TASKS: dict[str, Callable[[Path], Task]] = {"lesion-cnn": lesion_task}


def mask_figures(net: torch.nn.Module, pair: GeneratorPair, x: torch.Tensor, masks: np.ndarray, tol: int = 2) -> dict:
    """Where R = |g_s(x) - g_a(x)| (summed over channels) falls against the evidence masks, on the images
    whose mask is not empty: its mass inside the mask, the pointing game (``tol`` px) and chance levels."""
    from workers.evaluation import metrics as M

    sel = np.nonzero(masks.reshape(len(masks), -1).any(1))[0]
    lo = torch.full((1, x.shape[1], 1, 1), LO)
    hi = torch.full((1, x.shape[1], 1, 1), HI)
    xs = x[torch.from_numpy(sel)]
    with torch.no_grad():
        d = net(xs).argmax(1)
        gs, ga = pair(xs, lo, hi, d)
    r = (gs - ga).abs().sum(1).numpy()
    mass = [M.relevance_mass_accuracy(r[i], masks[j]) for i, j in enumerate(sel)]
    point = [M.pointing_game(r[i], masks[j], tol) for i, j in enumerate(sel)]
    yy, xx = np.mgrid[-tol : tol + 1, -tol : tol + 1]
    from scipy.ndimage import binary_dilation

    dil = [binary_dilation(masks[j], structure=(yy * yy + xx * xx) <= tol * tol).mean() for j in sel]
    return {
        "images": len(sel),
        "decided_positive": int((d == 1).sum()),
        "mass_inside_mask": float(np.mean(mass)),
        "pointing_game": float(np.mean(point)),
        "pointing_tolerance_px": tol,
        "chance_mass": float(masks[sel].mean()),
        "chance_pointing": float(np.mean(dil)),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model",
        default="shapes-star",
        help=f"registry name of the binary classifier ({', '.join(TASKS)} or a shapes task)",
    )
    ap.add_argument("--positive", default="star", choices=LABELS, help="the positive shape (class 1) of a shapes task")
    ap.add_argument("--train", type=int, default=3000, help="classifier training images")
    ap.add_argument("--generator-train", type=int, default=4000, help="generator training images (the first ones)")
    ap.add_argument("--heldout", type=int, default=500, help="held-out images for the report")
    ap.add_argument("--classifier-epochs", type=int, default=10)
    ap.add_argument("--generator-steps", type=int, default=700, help="generator optimiser steps")
    ap.add_argument("--batch", type=int, default=64, help="classifier batch")
    ap.add_argument("--generator-batch", type=int, default=32)
    ap.add_argument("--w-rec", type=float, default=10.0)
    ap.add_argument("--w-sim", type=float, default=3.0)
    ap.add_argument("--w-sim-start", type=float, default=None, help="similarity weight at step 0 (ramps to --w-sim)")
    ap.add_argument("--share-negative", type=float, default=0.65, help="share of each batch decided 0")
    ap.add_argument("--w-tv", type=float, default=1.0)
    ap.add_argument("--kappa", type=float, default=1.5, help="logit margin of the hinge losses")
    ap.add_argument("--bound", type=float, default=1.0, help="bound of the residual (normalised units)")
    ap.add_argument("--width", type=int, default=8, help="generator width")
    ap.add_argument("--no-augment", action="store_true", help="no flips / quarter turns in generator training")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--train-classifier",
        action="store_true",
        help="also (re)train the classifier (default: use the committed binary-<model> weights)",
    )
    ap.add_argument("--skip-classifier", action="store_true", help=argparse.SUPPRESS)  # the default now
    ap.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:6.1f}s] {msg}", flush=True)

    task = TASKS[a.model](a.out) if a.model in TASKS else shapes_task(a.model, a.positive, a.out)
    if a.train_classifier and not task.trainable:
        raise SystemExit(f"{a.model}'s classifier is trained by its own script (docs/clinical.md), not here")
    n_train = max(a.train, a.generator_train) if a.train_classifier else a.generator_train
    x, y, _ = task.data(n_train, task.train_seed)
    xh, yh, mh = task.data(a.heldout, task.heldout_seed)
    log(f"data: {len(x)} train, {len(xh)} held-out ({task.what})")
    a.out.mkdir(parents=True, exist_ok=True)
    cls_path = task.classifier_path
    from safetensors.torch import load_file, save_file

    if not a.train_classifier:
        cls_path = WEIGHTS_DIR / cls_path.name if not cls_path.exists() else cls_path
        net = task.architecture()
        net.load_state_dict(load_file(str(cls_path)))
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
    else:
        net = train_classifier(x[: a.train], y[: a.train], a.classifier_epochs, a.batch, log)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(cls_path))
        (a.out / f"binary-{a.model}.labels.txt").write_text(f"{task.labels[0]}\n{task.labels[1]}\n")
    with torch.no_grad():
        acc = float((net(xh).argmax(1) == yh).float().mean())
    log(f"classifier held-out accuracy {acc:.4f} ({cls_path.name})")

    xg = x[: a.generator_train]
    pair = train_generators(
        net,
        xg,
        a.generator_steps,
        a.generator_batch,
        a.w_rec,
        a.w_sim,
        a.w_tv,
        a.kappa,
        a.bound,
        a.width,
        a.lr,
        log,
        a.w_sim_start,
        a.share_negative,
        False if a.no_augment else task.augment,
    )
    res = evaluate(net, pair, xh)
    if a.model in TASKS:  # (the shapes report stays as it was)
        res["difference_map_vs_mask"] = mask_figures(net, pair, xh, mh)
    out = a.out / f"generators-{a.model}.safetensors"
    save_generators(
        pair,
        out,
        {
            "classifier_sha256": fingerprint(net),
            "channels": x.shape[1],
            "width": a.width,
            "bound": a.bound,
            "model": a.model,
            "positive": task.labels[1] if a.model in TASKS else a.positive,
            "command": "python -m workers.training.generators " + " ".join(argv if argv is not None else sys.argv[1:]),
        },
    )
    log(
        f"generators held-out: similar keeps {res['similar_keeps']:.4f}, adversarial flips "
        f"{res['adversarial_flips']:.4f} -> {out}"
    )
    report = {"classifier_heldout_accuracy": acc, **res, "seconds": round(time.time() - t0, 1)}
    if a.model in TASKS:  # the committed figures of docs/clinical.md (tests compare against them)
        cmd = "python -m workers.training.generators " + " ".join(argv if argv is not None else sys.argv[1:])
        figs = {"command": cmd, "heldout_seed": task.heldout_seed, **report}
        (a.out / f"generators-{a.model}.json").write_text(json.dumps(figs, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
