"""Train the binary classifier and its two generators (Charachon et al., survey §6 Eq. 27).

    python -m workers.generators.train            # everything, CPU, about 10 minutes on 2 shared cores
    python -m workers.generators.train --skip-classifier   # generators only, for the committed classifier

1. A binary classifier on the procedural shapes (``--positive`` shape vs the rest, half of
   the images positive): ``binary_cnn`` (ShapesCNN at half width), Adam, cross-entropy.
   Writes ``workers/weights/binary-<model>.safetensors`` and its labels file.
2. The generator pair against the frozen classifier f, with d(x) = f's decision on x:
     g_s: L1(g_s(x), x) * w_rec + CE(f(g_s(x)), d(x))                (similar: keep)
     g_a: CE(f(g_a(x)), 1 - d(x)) + L1(g_a(x), g_s(x)) * w_sim + TV(g_a(x) - g_s(x)) * w_tv
                                                                      (adversarial: flip, close to g_s)
   The two share the encoder; the decoders start identical. No discriminator (kept small
   enough for a CPU); the similarity and total-variation terms keep g_a's edit local and smooth.
   Writes ``workers/weights/generators-<model>.safetensors`` with the classifier's hash.

Everything is seeded; data: workers/data/shapes.py (train seed 100, held-out seed 200).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from workers.data.shapes import LABELS, generate, to_tensor
from workers.generators.model import (WEIGHTS_DIR, GeneratorPair, binary_cnn, fingerprint, generators_path,
                                      save_generators)

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
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * ((len(x) + batch - 1) // batch),
                                                pct_start=0.2)
    for ep in range(epochs):
        net.train()
        perm = torch.randperm(len(x), generator=g)
        tot, correct = 0.0, 0
        for s in range(0, len(x), batch):
            idx = perm[s:s + batch]
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


def train_generators(net: torch.nn.Module, x: torch.Tensor, epochs: int, batch: int, w_rec: float, w_sim: float,
                     w_tv: float, log) -> GeneratorPair:
    torch.manual_seed(2)
    pair = GeneratorPair(channels=x.shape[1], width=8)
    opt = torch.optim.Adam(pair.parameters(), lr=2e-3)
    lo = torch.full((1, x.shape[1], 1, 1), LO)
    hi = torch.full((1, x.shape[1], 1, 1), HI)
    with torch.no_grad():
        decision = torch.cat([net(x[s:s + 256]).argmax(1) for s in range(0, len(x), 256)])
    g = torch.Generator().manual_seed(3)
    steps = epochs * ((len(x) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.15)
    for ep in range(epochs):
        pair.train()
        perm = torch.randperm(len(x), generator=g)
        keep = flip = n = 0
        for s in range(0, len(x), batch):
            idx = perm[s:s + batch]
            xb, d = x[idx], decision[idx]
            gs, ga = pair(xb, lo, hi)
            ls, la = net(gs), net(ga)
            loss_s = w_rec * (gs - xb).abs().mean() + F.cross_entropy(ls, d)
            diff = ga - gs.detach()
            loss_a = F.cross_entropy(la, 1 - d) + w_sim * diff.abs().mean() + w_tv * tv(diff)
            loss = loss_s + loss_a
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            keep += int((ls.argmax(1) == d).sum())
            flip += int((la.argmax(1) != d).sum())
            n += len(idx)
        log(f"generators epoch {ep + 1}/{epochs}: loss {float(loss.detach()):.4f} similar keeps {keep / n:.3f} "
            f"adversarial flips {flip / n:.3f}")
    pair.eval()
    return pair


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="shapes-star", help="registry name of the binary classifier")
    ap.add_argument("--positive", default="star", choices=LABELS, help="the positive shape (class 1)")
    ap.add_argument("--train", type=int, default=3000, help="training images")
    ap.add_argument("--heldout", type=int, default=500, help="held-out images for the report")
    ap.add_argument("--classifier-epochs", type=int, default=10)
    ap.add_argument("--generator-epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--w-rec", type=float, default=10.0)
    ap.add_argument("--w-sim", type=float, default=2.0)
    ap.add_argument("--w-tv", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-classifier", action="store_true", help="reuse the committed classifier weights")
    ap.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:6.1f}s] {msg}", flush=True)

    positive = LABELS.index(a.positive)
    x, y, _ = binary_data(a.train, TRAIN_SEED, positive)
    xh, yh, _ = binary_data(a.heldout, HELDOUT_SEED, positive)
    log(f"data: {len(x)} train, {len(xh)} held-out ({a.positive} vs rest)")
    a.out.mkdir(parents=True, exist_ok=True)
    cls_path = a.out / f"binary-{a.model}.safetensors"
    from safetensors.torch import load_file, save_file

    if a.skip_classifier:
        net = binary_cnn(2)
        net.load_state_dict(load_file(str(cls_path)))
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
    else:
        net = train_classifier(x, y, a.classifier_epochs, a.batch, log)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(cls_path))
        (a.out / f"binary-{a.model}.labels.txt").write_text(f"not-{a.positive}\n{a.positive}\n")
    with torch.no_grad():
        acc = float((net(xh).argmax(1) == yh).float().mean())
    log(f"classifier held-out accuracy {acc:.4f} -> {cls_path.name}")

    pair = train_generators(net, x, a.generator_epochs, a.batch, a.w_rec, a.w_sim, a.w_tv, log)
    lo = torch.full((1, x.shape[1], 1, 1), LO)
    hi = torch.full((1, x.shape[1], 1, 1), HI)
    with torch.no_grad():
        d = net(xh).argmax(1)
        gs, ga = pair(xh, lo, hi)
        keep = float((net(gs).argmax(1) == d).float().mean())
        flip = float((net(ga).argmax(1) != d).float().mean())
    out = generators_path(a.model) if a.out == WEIGHTS_DIR else a.out / f"generators-{a.model}.safetensors"
    save_generators(pair, out, {"classifier_sha256": fingerprint(net), "channels": x.shape[1], "width": 8,
                                "model": a.model, "positive": a.positive})
    log(f"generators held-out: similar keeps {keep:.4f}, adversarial flips {flip:.4f} -> {out.name}")
    print(json.dumps({"classifier_heldout_accuracy": acc, "similar_keeps": keep, "adversarial_flips": flip,
                      "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()
