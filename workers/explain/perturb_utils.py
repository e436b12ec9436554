"""Helpers shared by the perturbation methods (their fills are
:func:`workers.explain.baselines.baseline`): batch sizes for many perturbed copies, seeds."""

from __future__ import annotations

import torch

from workers.models.loading import LoadedModel

# elements (C*H*W) of perturbed images per forward pass: many small copies or a few large ones
ELEMENTS_PER_FORWARD = 1 << 22


def batch_for(x: torch.Tensor, cap: int = 256) -> int:
    """How many perturbed copies of one (C, H, W) image go through the net in one forward pass."""
    per = max(int(x[0].numel()), 1)
    return max(1, min(cap, ELEMENTS_PER_FORWARD // per))


def seed_of(seed: int | None) -> int:
    return 0 if seed is None else int(seed)


def generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed_of(seed))
    return g


def clamp_box(model: LoadedModel, x: torch.Tensor) -> torch.Tensor:
    lo, hi = model.input_bounds()
    return torch.max(torch.min(x, hi.to(x.dtype)), lo.to(x.dtype))


# ---- class scores that do not saturate ------------------------------------------------------------
# The softmax probability p_t of a confidently predicted class rounds to exactly 1.0 in float32
# (the demo model: about half of the generated images), so any objective built on p_t, or on
# the gradient of the cross-entropy (softmax - onehot), is then exactly constant / zero. The
# scores below are computed from the logits and keep their resolution at any confidence.


def log_odds(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log(p_t / (1 - p_t)) = z_t - logsumexp_{j != t} z_j per sample, from the logits z (N, K).

    Monotone in the softmax probability p_t (p_t = sigmoid of it) and linear in z_t when the
    prediction is saturated (its gradient is a convex combination of grad z_t - grad z_j).
    Cross-entropy = softplus(-log_odds): both have the same level sets. One-output models: z_t."""
    t = targets.view(-1, 1)
    zt = logits.gather(1, t).squeeze(1)
    if logits.shape[1] == 1:
        return zt
    others = logits.scatter(1, t, float("-inf"))
    return zt - torch.logsumexp(others, dim=1)


def logit_margin(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """z_t - max_{j != t} z_j per sample (Carlini & Wagner's margin; negative once t is beaten)."""
    t = targets.view(-1, 1)
    zt = logits.gather(1, t).squeeze(1)
    if logits.shape[1] == 1:
        return zt
    return zt - logits.scatter(1, t, float("-inf")).amax(dim=1)


def softmax_saturated(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per sample: the target's float32 softmax probability is exactly 0 or 1."""
    p = torch.softmax(logits.float(), 1).gather(1, targets.view(-1, 1)).squeeze(1)
    return (p == 1.0) | (p == 0.0)
