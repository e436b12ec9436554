"""§6: explanations from adversarial examples. The map is x_adv - x in the normalised input
space for an untargeted attack that pushes the input away from the target class.

The loss L(x, t) the gradient attacks increase (``loss``) is computed on the logits z:

- log_odds (default): L = logsumexp_{j != t} z_j - z_t = -log(p_t / (1 - p_t)). Cross-entropy
  is softplus(L), a monotone function of it, so both have the same maximisers and, wherever
  the CE gradient is non-zero, the same gradient sign (grad CE = sigmoid(L) grad L): FGSM/PGD
  steps are those of the classical CE attacks. Unlike CE it does not saturate: when p_t rounds
  to 1.0 in float32, grad CE = (softmax - onehot) . grad z is exactly 0 (or below 1e-6) and CE
  attacks do not move at all, while grad L stays a convex combination of grad z_j - grad z_t.
- margin: L = max_{j != t} z_j - z_t (Carlini & Wagner's margin, the hard-max limit of log_odds).
- cross_entropy: L = CE(softmax(z), t) in float32 (Goodfellow et al., Madry et al.; Captum's
  usual loss) - returns a zero map, with a warning, on saturated predictions.

- fgsm (Goodfellow et al.): x' = x + eps * sign(grad_x L), components whose
  gradient magnitude is at most 1e-6 are left unchanged; then clamped to the input box.
- pgd (Madry et al., L-inf): repeated FGSM steps of ``step_size``, each followed by the
  projection onto the eps ball around x and the input box.
- deepfool (Moosavi-Dezfooli et al., multi-class): linearise the boundaries between the
  target and the ``candidates`` top classes, step to the nearest one, repeat until the
  target is no longer the arg max; the accumulated step is scaled by (1 + overshoot).
- one_pixel (Su et al.): differential evolution (DE/rand/1, F = 0.5, no crossover) over
  ``pixels`` (row, col, r, g, b) tuples maximising L (for log_odds and cross_entropy the same
  ranking as Su et al.'s target probability, which is constant over a saturated population);
  stops at the first generation that flips the decision.

Every sample whose map is exactly zero gets a ``warning`` in its metadata saying why.

epsilon and step_size are on the [0,1] pixel scale and divided by the model's std per
channel. Every attack's result is clamped to the model's input box (pixels in [0,1]).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from workers.explain.base import Attribution, Context, register
from workers.explain.perturb_utils import (
    batch_for,
    clamp_box,
    generator,
    log_odds,
    logit_margin,
    seed_of,
    softmax_saturated,
)

ZERO_GRAD = 1e-6  # gradient components at most this large do not move (as Captum's FGSM)


def attack_loss(logits: torch.Tensor, targets: torch.Tensor, loss: str) -> torch.Tensor:
    """Per-sample loss L the untargeted attack increases (see the module docstring)."""
    if loss == "log_odds":
        return -log_odds(logits, targets)
    if loss == "margin":
        return -logit_margin(logits, targets)
    if loss == "cross_entropy":
        return F.cross_entropy(logits, targets, reduction="none")
    raise ValueError(f"unknown loss {loss!r}")


def _loss_grad(net: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor, loss: str) -> torch.Tensor:
    """Gradient of the per-sample loss of the target class w.r.t. the input."""
    with torch.enable_grad():
        xi = x.detach().requires_grad_(True)
        value = attack_loss(net(xi), targets, loss)
        (g,) = torch.autograd.grad(value.sum(), xi)
    return g


def _signed_step(x: torch.Tensor, g: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    return torch.where(g.abs() > ZERO_GRAD, x + step * torch.sign(g), x)


def fgsm(ctx: Context, eps: torch.Tensor, loss: str = "log_odds") -> torch.Tensor:
    g = _loss_grad(ctx.net, ctx.x, ctx.targets, loss)
    return clamp_box(ctx.model, _signed_step(ctx.x, g, eps)).detach()


def pgd(
    ctx: Context,
    eps: torch.Tensor,
    step: torch.Tensor,
    steps: int,
    random_start: bool,
    seed: int | None,
    loss: str = "log_odds",
) -> torch.Tensor:
    x = ctx.x.detach()
    xa = x
    if random_start:
        u = torch.rand(x.shape, generator=generator(seed), dtype=x.dtype).to(x.device)
        xa = clamp_box(ctx.model, x + (u * 2 * eps - eps))
    for i in range(steps):
        ctx.progress(i / steps)
        g = _loss_grad(ctx.net, xa, ctx.targets, loss)
        xa = clamp_box(ctx.model, _signed_step(xa, g, step))
        xa = x + torch.max(torch.min(xa - x, eps), -eps)  # projection on the L-inf ball
        xa = clamp_box(ctx.model, xa).detach()
    return xa


def deepfool(ctx: Context, overshoot: float, max_iter: int, candidates: int) -> tuple[torch.Tensor, list[int]]:
    """Only the samples still classified as their target take part in an iteration."""
    net, x, t = ctx.net, ctx.x.detach(), ctx.targets
    n = x.shape[0]
    with torch.no_grad():
        logits0 = net(x)
    k = min(candidates, logits0.shape[1])
    # candidate classes: the top-scoring others of the original input
    order = logits0.argsort(dim=1, descending=True)
    cand = torch.empty(n, k - 1, dtype=torch.long, device=x.device)
    for i in range(n):
        others = order[i][order[i] != t[i]]
        cand[i] = others[: k - 1]
    r_tot = torch.zeros_like(x)
    xa = x.clone()
    active = logits0.argmax(1) == t
    iters = [0] * n
    for it in range(max_iter):
        idx = active.nonzero().flatten()
        if idx.numel() == 0:
            break
        ctx.progress(it / max_iter)
        rows = torch.arange(idx.numel(), device=x.device)
        ti, ci = t[idx], cand[idx]
        with torch.enable_grad():
            xi = xa[idx].detach().requires_grad_(True)
            logits = net(xi)
            f0 = logits[rows, ti]
            (g0,) = torch.autograd.grad(f0.sum(), xi, retain_graph=True)
            best_pert = torch.full((idx.numel(),), float("inf"), device=x.device)
            best_w = torch.zeros_like(xi)
            for j in range(k - 1):
                fk = logits[rows, ci[:, j]]
                (gk,) = torch.autograd.grad(fk.sum(), xi, retain_graph=j < k - 2)
                w = gk - g0
                pert = (fk - f0).detach().abs() / (w.flatten(1).norm(dim=1) + 1e-12)
                better = pert < best_pert
                best_pert = torch.where(better, pert, best_pert)
                best_w = torch.where(better.view(-1, 1, 1, 1), w, best_w)
        wn = best_w.flatten(1).norm(dim=1).clamp_min(1e-12)
        r_tot[idx] = r_tot[idx] + ((best_pert + 1e-4) / wn).view(-1, 1, 1, 1) * best_w
        xa[idx] = clamp_box(ctx.model, x[idx] + (1 + overshoot) * r_tot[idx]).detach()
        with torch.no_grad():
            still = net(xa[idx]).argmax(1) == ti
        for i in idx.tolist():
            iters[i] = it + 1
        active[idx] = still
    return xa, iters


def one_pixel(
    ctx: Context, pixels: int, population: int, iterations: int, seed: int | None, loss: str = "log_odds"
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    net, model = ctx.net, ctx.model
    n, c, h, w = ctx.x.shape
    mean, std = model.mean_std()
    g = generator(seed)
    out = ctx.x.detach().clone()
    extra: list[dict[str, Any]] = []
    chunk = batch_for(ctx.x, ctx.capped(256, backward=False))  # the job's memory bound
    total = n * iterations

    def apply(x1: torch.Tensor, pop: torch.Tensor) -> torch.Tensor:
        """pop (P, pixels, 2 + C): rows, cols in [0, H) x [0, W), colours in [0, 1] -> images (P, C, H, W)."""
        p = pop.shape[0]
        imgs = x1.expand(p, -1, -1, -1).clone()
        r = pop[..., 0].long().clamp(0, h - 1).to(x1.device)
        cc = pop[..., 1].long().clamp(0, w - 1).to(x1.device)
        col = ((pop[..., 2:].to(x1.device) - mean.view(1, 1, -1)) / std.view(1, 1, -1)).to(x1.dtype)
        pi = torch.arange(p, device=x1.device).view(-1, 1).expand_as(r)
        imgs[pi, :, r, cc] = col
        return imgs

    def fitness(x1: torch.Tensor, t: int, pop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-L per member (lower is better) and the predicted classes."""
        fits, preds = [], []
        with torch.no_grad():
            for s in range(0, pop.shape[0], chunk):
                logits = net(apply(x1, pop[s : s + chunk])).float()
                tt = torch.full((logits.shape[0],), t, dtype=torch.long, device=logits.device)
                fits.append(-attack_loss(logits, tt, loss).cpu())
                preds.append(logits.argmax(1).cpu())
        return torch.cat(fits), torch.cat(preds)

    lo = torch.tensor([0.0, 0.0] + [0.0] * c)
    hi = torch.tensor([h - 1e-3, w - 1e-3] + [1.0] * c)
    for i in range(n):
        x1, t = ctx.x[i : i + 1].detach(), int(ctx.targets[i])
        pop = lo + torch.rand(population, pixels, 2 + c, generator=g) * (hi - lo)
        fit, pred = fitness(x1, t, pop)
        gens = 0
        for it in range(iterations):
            if bool((pred != t).any()):
                break
            ctx.progress((i * iterations + it) / total)
            r = torch.rand(population, population, generator=g)
            r.fill_diagonal_(2.0)
            a, b, cidx = r.argsort(dim=1)[:, :3].unbind(1)
            trial = (pop[a] + 0.5 * (pop[b] - pop[cidx])).clamp(lo, hi)
            tfit, tpred = fitness(x1, t, trial)
            better = tfit < fit
            pop = torch.where(better.view(-1, 1, 1), trial, pop)
            fit = torch.where(better, tfit, fit)
            pred = torch.where(better, tpred, pred)
            gens = it + 1
        flips = pred != t
        # prefer a flipping member, then the lowest -L
        score = torch.where(flips, fit, torch.full_like(fit, float("inf"))) if bool(flips.any()) else fit
        best = pop[int(score.argmin())]
        out[i] = apply(x1, best[None])[0]
        extra.append(
            {
                "generations": gens,
                "pixels": [
                    {"row": int(p[0]), "col": int(p[1]), "value": [round(float(v), 4) for v in p[2:]]} for p in best
                ],
            }
        )
    return out, extra


def _norms(model, x: torch.Tensor, xa: torch.Tensor) -> list[dict[str, float]]:
    _, std = model.mean_std()
    d = ((xa - x) * std).flatten(1)  # on the [0,1] pixel scale
    xp = (x * std + model.mean_std()[0]).flatten(1)
    l2 = d.norm(dim=1)
    return [
        {
            "l2": float(l2[i]),
            "linf": float(d[i].abs().max()),
            "relative_l2": float(l2[i] / xp[i].norm().clamp_min(1e-12)),
        }
        for i in range(x.shape[0])
    ]


def _warning(attack: str, loss: str, delta: torch.Tensor, saturated: bool, predicted: bool) -> str | None:
    """Why a sample's map is exactly zero (None when it is not)."""
    if bool((delta != 0).any()):
        return None
    if attack == "deepfool" and not predicted:
        return "zero map: the target is not the predicted class, DeepFool has no boundary to cross"
    if loss == "cross_entropy" and saturated:
        return (
            "zero map: the target's softmax probability is exactly 0 or 1 in float32 (saturated), so the cross-entropy "
            "gradient vanishes; use loss=log_odds or loss=margin"
        )
    if attack in ("fgsm", "pgd"):
        return "zero map: the loss gradient is zero (at most 1e-6) at every input component"
    return "zero map: the attack did not change the input"


@register("adversarial")
def adversarial(ctx: Context) -> Attribution:
    p = ctx.params
    _, std = ctx.model.mean_std()
    used: dict[str, Any] = {"attack": p.attack}
    extra: list[dict[str, Any]] = [{} for _ in range(ctx.x.shape[0])]
    if p.attack in ("fgsm", "pgd", "one_pixel"):
        used["loss"] = p.loss
    if p.attack == "fgsm":
        used["epsilon"] = p.epsilon
        xa = fgsm(ctx, p.epsilon / std, p.loss)
    elif p.attack == "pgd":
        step = p.step_size if p.step_size is not None else 2.5 * p.epsilon / p.steps
        used.update(epsilon=p.epsilon, steps=p.steps, step_size=step, random_start=p.random_start)
        if p.random_start:
            used["seed"] = seed_of(p.seed)
        xa = pgd(ctx, p.epsilon / std, step / std, p.steps, p.random_start, p.seed, p.loss)
    elif p.attack == "deepfool":
        used.update(overshoot=p.overshoot, max_iter=p.max_iter, candidates=p.candidates)
        xa, iters = deepfool(ctx, p.overshoot, p.max_iter, p.candidates)
        extra = [{"iterations": k} for k in iters]
    else:
        used.update(pixels=p.pixels, population=p.population, iterations=p.iterations, seed=seed_of(p.seed))
        xa, extra = one_pixel(ctx, p.pixels, p.population, p.iterations, p.seed, p.loss)
    with torch.no_grad():
        l0, l1 = ctx.net(ctx.x).float(), ctx.net(xa).float()
    pr0, pr1 = torch.softmax(l0, 1), torch.softmax(l1, 1)
    lo0, lo1 = log_odds(l0, ctx.targets), log_odds(l1, ctx.targets)
    saturated = softmax_saturated(l0, ctx.targets)
    delta = (xa - ctx.x).detach()
    if p.attack == "one_pixel":
        delta = delta.abs()
    meta = []
    for i, nm in enumerate(_norms(ctx.model, ctx.x, xa)):
        t = int(ctx.targets[i])
        predicted = int(l0[i].argmax()) == t
        mi = {
            "flipped": bool(int(l1[i].argmax()) != t),
            "target_was_predicted": predicted,
            "adversarial_class": int(l1[i].argmax()),
            "target_probability": float(pr0[i, t]),
            "adversarial_target_probability": float(pr1[i, t]),
            "target_log_odds": float(lo0[i]),
            "adversarial_target_log_odds": float(lo1[i]),
            "norm_scale": "pixel [0,1]",
            **nm,
            **extra[i],
        }
        w = _warning(p.attack, p.loss, delta[i], bool(saturated[i]), predicted)
        if w:
            mi["warning"] = w
        meta.append(mi)
    ctx.progress(1.0)
    return Attribution(delta, used_params=used, meta=meta)
