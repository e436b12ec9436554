"""Train the demo model: ``python -m workers.training.demo_model``.

Generates the procedural shapes data set (``workers/training/shapes.py``), trains
``ShapesCNN`` on CPU deterministically (fixed seeds, deterministic algorithms,
a fixed thread count) with a penalty on last-conv-block activations outside the
objects' masks (``--mask-penalty``; it lifts the Grad-CAM/FEM pointing game from
0.86/0.725 to 0.985/0.975 at the same accuracy, docs/demo-model.md), measures the accuracy on a freshly
generated held-out set
(a different seed) and writes

    workers/models/weights/shapes-cnn.safetensors    (safetensors state_dict)
    workers/models/weights/shapes-cnn.labels.txt     (one label per line, class index order)

The input preprocessing is the registry's (``workers/models/registry/default.yaml``):
pixels / 255, then (x - 0.5) / 0.25 per channel.

Reuse with another data set (e.g. a Clever-Hans variant)::

    from workers.training.demo_model import fit, evaluate, save
    model = fit(ShapesCNN(), images, labels, epochs=6, seed=0)
    save(model, "out.safetensors", LABELS)
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from workers.models import WEIGHTS_DIR
from workers.models.shapes_cnn import ShapesCNN
from workers.training.shapes import LABELS, generate

MEAN, STD = 0.5, 0.25  # the registry's preprocessing of shapes-cnn

TRAIN_SEED, HELDOUT_SEED = 1, 2  # data seeds (tests use other seeds)
MASK_PENALTY = 0.5  # the demo model's weight of the background-activation penalty (see fit)


def normalise(batch_u8: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W), (pixels / 255 - mean) / std."""
    x = batch_u8.permute(0, 3, 1, 2).float().div_(255.0)
    return (x - MEAN) / STD


def set_determinism(seed: int, threads: int) -> None:
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)


def init_weights(model: nn.Module) -> nn.Module:
    """He initialisation with zero biases, and a zero last layer (uniform first predictions): the
    plain conv/ReLU stack has no normalisation layers and sits on a plateau for hundreds of steps
    from PyTorch's default init. Uses the global torch RNG (seed it first)."""
    last = None
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
            last = m
    if isinstance(last, nn.Linear):
        nn.init.zeros_(last.weight)
    return model


def fit(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int = 6,
    batch_size: int = 32,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    flips: bool = True,
    init: bool = True,
    activation_l1: float = 0.0,
    masks: np.ndarray | None = None,
    mask_penalty: float = 0.0,
    mask_dilation: int = 2,
    log: Callable[[str], None] = print,
    on_epoch: Callable[[int, nn.Module], None] | None = None,
) -> nn.Module:
    """Train ``model`` (in place) with AdamW and a one-cycle learning rate on uint8 images (N,H,W,3).

    ``activation_l1``: weight of an L1 penalty on the mean activation of the last conv block (the
    input of ``model.features[-1]``): sparse, object-centred feature maps for CAM-type methods.
    ``masks`` (bool (N,H,W), the objects) with ``mask_penalty`` > 0: adds ``mask_penalty`` times the
    share of the last conv block's activation mass (summed over channels) that lies in cells whose
    centre is outside the object mask dilated by ``mask_dilation`` px, averaged over the batch. It
    is off for the first epoch and ramps up linearly over the second (from the start it stops the
    plain ReLU stack from ever leaving its initial plateau: all-zero activations have no share
    outside). Flips are applied to the masks too.
    ``init``: first re-initialise the weights with ``init_weights`` (seeded by ``seed``); pass False to
    fine-tune a trained model.

    Random flips are on by default (every shape class is closed under mirroring; turn them off for
    data whose label depends on handedness). Deterministic for a given seed and thread count."""
    g = torch.Generator().manual_seed(seed)
    if init:
        torch.manual_seed(seed)
        init_weights(model)
    x_all = torch.from_numpy(np.ascontiguousarray(images))
    y_all = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    n = len(y_all)
    steps_per_epoch = (n + batch_size - 1) // batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.15)
    acts: list[torch.Tensor] = []
    hook = None
    use_masks = masks is not None and mask_penalty > 0
    if activation_l1 > 0 or use_masks:
        hook = model.features[-1].register_forward_pre_hook(lambda m, inp: acts.append(inp[0]))
    m_all = None
    if use_masks:
        m = np.asarray(masks, dtype=bool)
        if mask_dilation > 0:
            from scipy.ndimage import binary_dilation

            m = np.stack([binary_dilation(mi, iterations=mask_dilation) for mi in m])
        m_all = torch.from_numpy(m)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=g)
        t0, total, correct, loss_sum = time.time(), 0, 0, 0.0
        for s in range(steps_per_epoch):
            idx = perm[s * batch_size : (s + 1) * batch_size]
            x = normalise(x_all[idx])
            y = y_all[idx]
            mk = m_all[idx].unsqueeze(1).float() if m_all is not None else None
            if flips:
                fh = (torch.rand(len(idx), generator=g) < 0.5).view(-1, 1, 1, 1)
                fv = (torch.rand(len(idx), generator=g) < 0.5).view(-1, 1, 1, 1)
                x = torch.where(fh, x.flip(3), x)
                x = torch.where(fv, x.flip(2), x)
                if mk is not None:
                    mk = torch.where(fh, mk.flip(3), mk)
                    mk = torch.where(fv, mk.flip(2), mk)
            acts.clear()
            out = model(x)
            loss = F.cross_entropy(out, y)
            if acts:
                a = acts[-1]
                if activation_l1 > 0:
                    loss = loss + activation_l1 * a.mean()
                if mk is not None:
                    ramp = min(1.0, max(0.0, (epoch * steps_per_epoch + s - steps_per_epoch) / steps_per_epoch))
                    loss = loss + mask_penalty * ramp * background_share(a, mk)
                acts.clear()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((out.argmax(1) == y).sum())
            total += len(idx)
        log(
            f"epoch {epoch + 1}/{epochs}: loss {loss_sum / total:.4f}, train acc {correct / total:.4f}, "
            f"{time.time() - t0:.0f} s"
        )
        if on_epoch is not None:
            on_epoch(epoch, model)
    if hook is not None:
        hook.remove()
    model.eval()
    return model


def background_share(acts: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """acts (N, K, h, w) >= 0, masks (N, 1, H, W) in {0, 1}: the mean over the batch of the share of
    each sample's activation mass in cells whose centre lies outside the mask (a cell is inside when
    the bilinear sample of the mask at its centre is > 0)."""
    inside = (F.interpolate(masks, size=acts.shape[-2:], mode="bilinear", align_corners=False) > 0).float()
    return ((acts * (1 - inside)).sum((1, 2, 3)) / (acts.sum((1, 2, 3)) + 1e-3)).mean()


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    model.eval()
    x_all = torch.from_numpy(np.ascontiguousarray(images))
    out = [model(normalise(x_all[i : i + batch_size])).argmax(1) for i in range(0, len(x_all), batch_size)]
    return torch.cat(out).numpy()


def evaluate(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    return float((predict(model, images) == np.asarray(labels)).mean())


def save(model: nn.Module, path: str | Path, labels: list[str]) -> tuple[Path, Path]:
    """Write the state_dict as safetensors and the labels next to it (``<stem>.labels.txt``)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"labels": ",".join(labels)})
    lpath = path.with_name(path.name.removesuffix(".safetensors") + ".labels.txt")
    lpath.write_text("".join(f"{lab}\n" for lab in labels))
    return path, lpath


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(prog="python -m workers.training.demo_model", description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-size", type=int, default=24000)
    ap.add_argument("--heldout-size", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument(
        "--activation-l1",
        type=float,
        default=0.0,
        help="L1 penalty on the last conv block's activations (tried: worse maps; default off)",
    )
    ap.add_argument(
        "--mask-penalty",
        type=float,
        default=MASK_PENALTY,
        help="weight of the share of the last conv block's activations outside the object masks (0: off)",
    )
    ap.add_argument("--mask-dilation", type=int, default=2, help="px by which the masks are dilated first")
    ap.add_argument("--seed", type=int, default=0, help="model initialisation and batch order")
    ap.add_argument("--data-seed", type=int, default=TRAIN_SEED)
    ap.add_argument("--heldout-seed", type=int, default=HELDOUT_SEED)
    ap.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (results are bit-reproducible for a fixed value)"
    )
    ap.add_argument("--out", default=str(WEIGHTS_DIR / "shapes-cnn.safetensors"))
    ap.add_argument(
        "--min-accuracy", type=float, default=0.97, help="refuse to write weights below this held-out accuracy"
    )
    args = ap.parse_args(argv)

    set_determinism(args.seed, args.threads)
    t0 = time.time()
    x_tr, y_tr, m_tr = generate(args.train_size, args.data_seed)
    x_te, y_te, _ = generate(args.heldout_size, args.heldout_seed)
    print(
        f"data: {len(y_tr)} training images (seed {args.data_seed}), {len(y_te)} held-out "
        f"(seed {args.heldout_seed}), {time.time() - t0:.0f} s"
    )

    model = ShapesCNN(num_classes=len(LABELS))
    t1 = time.time()
    fit(
        model,
        x_tr,
        y_tr,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        activation_l1=args.activation_l1,
        masks=m_tr,
        mask_penalty=args.mask_penalty,
        mask_dilation=args.mask_dilation,
        on_epoch=lambda e, m: print(f"  held-out acc {evaluate(m, x_te, y_te):.4f}"),
    )
    train_s = time.time() - t1
    acc = evaluate(model, x_te, y_te)
    print(
        f"held-out accuracy: {acc:.4f} ({len(y_te)} images, seed {args.heldout_seed}); "
        f"training {train_s:.0f} s, total {time.time() - t0:.0f} s"
    )
    if acc < args.min_accuracy:
        raise SystemExit(f"held-out accuracy {acc:.4f} < {args.min_accuracy}: weights not written")
    w, lab = save(model, args.out, LABELS)
    print(f"wrote {w} and {lab}")
    return acc


if __name__ == "__main__":
    main()
