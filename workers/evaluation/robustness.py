"""Robustness of maps to small input changes (survey §7).

- :func:`adversarial_robustness` — Galli, Marrone, Moscato, Sansone, "Reliability of
  eXplainable Artificial Intelligence in adversarial perturbation scenarios", ICPR workshops
  2021: the map of x and the map of its adversarial copy x' (FGSM, Goodfellow et al. 2015, or
  DeepFool, Moosavi-Dezfooli et al. 2016), both for the original target class, are compared
  with the Dice coefficient (maps binarised at a quantile) and Pearson's CC; whether the
  prediction changed is reported beside them (Galli et al. separate both cases).
  The attack is the ``adversarial`` explainer's (its map is x' - x in the normalised input)
  when the library has it; otherwise the minimal FGSM / DeepFool below.
- :func:`max_sensitivity` — Yeh, Hsieh, Suggala, Inouye, Ravikumar, "On the (in)fidelity and
  sensitivity of explanations", NeurIPS 2019, Eq. 3 (as Quantus ``MaxSensitivity``):
  max over ``samples`` draws d ~ U[-r, r]^D of ||Phi(x + d) - Phi(x)||_F / ||Phi(x)||_F, with
  the radius r on the [0,1] pixel scale and x + d clamped to the valid input box.
"""

from __future__ import annotations

import numpy as np
import torch

from workers.errors import MethodError
from workers.evaluation.common import MapFn, batched_maps, clamp_input, pixel_scale, predict, to_numpy
from workers.evaluation.metrics import cc, dice
from workers.explain import IMPLEMENTATIONS, attribute
from workers.explain.base import NO_PROGRESS, Progress
from workers.explain.perturb_utils import log_odds
from workers.models.loading import LoadedModel


def fgsm(model: LoadedModel, x: torch.Tensor, targets: torch.Tensor, epsilon: float) -> torch.Tensor:
    """x + eps * sign(grad_x L), L = -log(p_t / (1 - p_t)) (the library attack's default loss: the
    direction of cross-entropy, without its saturation at p_t = 1), eps on the pixel scale, clamped to
    the input box; components whose gradient is at most 1e-6 in magnitude stay (as Captum's FGSM)."""
    with torch.enable_grad():
        xi = x.detach().requires_grad_(True)
        loss = -log_odds(model.module(xi), targets).sum()
        (g,) = torch.autograd.grad(loss, xi)
    step = torch.where(g.abs() > 1e-6, g.sign(), torch.zeros_like(g))
    return clamp_input(model, x + epsilon * pixel_scale(model) * step).detach()


def deepfool(
    model: LoadedModel,
    x: torch.Tensor,
    targets: torch.Tensor,
    overshoot: float = 0.02,
    max_iter: int = 50,
    candidates: int = 10,
) -> torch.Tensor:
    """Multi-class DeepFool (Moosavi-Dezfooli et al. 2016, Alg. 2), one sample at a time: step to the
    nearest linearised boundary among the ``candidates`` top classes until the target is no longer
    the arg max; the accumulated step is scaled by (1 + overshoot)."""
    out = []
    for i in range(x.shape[0]):
        x0, t = x[i : i + 1].detach(), int(targets[i])
        with torch.no_grad():
            logits0 = model.module(x0)[0]
        cand = [int(k) for k in logits0.argsort(descending=True) if int(k) != t][: candidates - 1]
        r_tot = torch.zeros_like(x0)
        xa = x0
        for _ in range(max_iter):
            with torch.enable_grad():
                xi = xa.detach().requires_grad_(True)
                logits = model.module(xi)[0]
                if int(logits.argmax()) != t:
                    break
                grads = [torch.autograd.grad(logits[k], xi, retain_graph=True)[0] for k in [t] + cand]
            f = (logits[cand] - logits[t]).detach()
            ws = torch.stack([g - grads[0] for g in grads[1:]])
            norms = ws.flatten(1).norm(dim=1).clamp_min(1e-12)
            j = int((f.abs() / norms).argmin())
            r_tot = r_tot + (f[j].abs() + 1e-4) / norms[j] ** 2 * ws[j]
            xa = clamp_input(model, x0 + (1 + overshoot) * r_tot).detach()
        out.append(xa)
    return torch.cat(out)


def adversarial_copy(
    model: LoadedModel, x: torch.Tensor, targets: torch.Tensor, attack: str, params: dict
) -> torch.Tensor:
    """x' for ``attack`` (fgsm | deepfool): the library's ``adversarial`` method when registered
    (x' = x + its map), else the local implementation."""
    if attack == "fgsm":
        p = {"attack": "fgsm", "epsilon": params.get("epsilon", 4 / 255)}
    elif attack == "deepfool":
        p = {"attack": "deepfool", **{k: params[k] for k in ("overshoot", "max_iter", "candidates") if k in params}}
    else:
        raise ValueError(f"unknown attack {attack!r}")
    if "adversarial" in IMPLEMENTATIONS:
        try:
            delta = attribute(model, x, targets, "adversarial", p).maps
        except MethodError:  # not applicable to this model: the local attack below
            delta = None
        if delta is not None and delta.shape == x.shape:
            return (x + delta.to(x.dtype)).detach()
    if attack == "fgsm":
        return fgsm(model, x, targets, p["epsilon"])
    return deepfool(model, x, targets, p.get("overshoot", 0.02), p.get("max_iter", 50), p.get("candidates", 10))


def adversarial_robustness(
    model: LoadedModel,
    x: torch.Tensor,
    targets: torch.Tensor,
    fn: MapFn,
    maps: torch.Tensor | None = None,
    attack: str = "fgsm",
    quantile: float = 0.8,
    progress: Progress = NO_PROGRESS,
    **attack_params,
) -> list[dict[str, float]]:
    """Per sample {dice, cc, prediction_changed (0/1)} between the map of x and of its adversarial copy."""
    if maps is None:
        maps = fn(model, x, targets)
    progress(0.1)
    xa = adversarial_copy(model, x, targets, attack, attack_params)
    progress(0.6)
    maps_a = fn(model, xa, targets)
    changed = predict(model, xa) != predict(model, x)
    m, ma = to_numpy(maps), to_numpy(maps_a)
    progress(1.0)
    return [
        {"dice": dice(m[i], ma[i], quantile), "cc": cc(m[i], ma[i]), "prediction_changed": float(changed[i])}
        for i in range(x.shape[0])
    ]


def max_sensitivity(
    model: LoadedModel,
    x: torch.Tensor,
    targets: torch.Tensor,
    fn: MapFn,
    maps: torch.Tensor | None = None,
    radius: float = 0.02,
    samples: int = 10,
    seed: int = 0,
    chunk: int = 16,
    progress: Progress = NO_PROGRESS,
) -> np.ndarray:
    """Per-sample max-sensitivity (Yeh et al. 2019) of the maps ``fn`` computes."""
    n = x.shape[0]
    if maps is None:
        maps = fn(model, x, targets)
    g = torch.Generator().manual_seed(seed)
    noise = (torch.rand((samples,) + tuple(x.shape), generator=g, dtype=torch.float64) * 2 - 1) * radius
    xs = clamp_input(model, x[None] + noise.to(x.dtype).to(x.device) * pixel_scale(model)).reshape(-1, *x.shape[1:])
    ts = targets.repeat(samples)
    maps_n = batched_maps(fn, model, xs, ts, chunk=chunk, progress=progress).reshape(samples, n, -1).double()
    m = maps.detach().double().reshape(1, n, -1).cpu()
    num = (maps_n.cpu() - m).norm(dim=2)
    den = m.norm(dim=2)
    sens = torch.where(den > 0, num / den, torch.full_like(num, float("nan")))
    return sens.max(dim=0).values.numpy()
