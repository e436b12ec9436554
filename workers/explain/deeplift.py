"""DeepLIFT (§5.2, Eqs. 19-25; Shrikumar et al. 2017) through the per-call engine.

The input ``x`` and its reference ``x0`` run as ONE batch through the network
under a :class:`~workers.explain.canonize.CheckedRuleMode`, so every call of a
non-linearity sees its input for ``x`` and for ``x0`` side by side (whichever
module, reused or functional, made the call). Backward passes carry multipliers
(Eq. 20-21: the chain rule for multipliers is the chain rule of autograd).

Rescale (batch ``[x; x0]``, 2N samples)
    Linear rule (Eq. "m = w") at conv / linear / batch-norm / additions / average
    pooling: their plain gradient. Rescale at every ReLU call:
    ``m = dz / dy`` (the ReLU derivative where dy = 0). Max-pooling: the whole
    difference dz of a window goes to the position that holds the larger of the two
    maxima (the arg-max of x if max(x) >= max(x0), else the arg-max of x0), i.e.
    ``m_i = dz / dy_i`` there, 0 elsewhere, accumulated over overlapping windows
    (Captum's rule for non-overlapping windows; Captum's unpooling overwrites
    instead of adding where windows overlap, which breaks Eq. 19 on AlexNet).

RevealCancel (batch ``[x; x0; D+; D-]``, 4N samples)
    Each tensor on the path carries, next to its values for x and x0, the sums of
    the positive and negative contributions to its difference, D+ >= 0 >= D-,
    D+ + D- = dy (Eq. 22). Linear ops propagate them with the positive and negative
    parts of their weights (a contribution w_ij D_i is positive when w_ij and D_i
    have the same sign); at a ReLU, Eqs. 23-24 give dz+ and dz- from y0 = the
    reference input, dy+ = D+, dy- = D-, and Eq. 25 the two multipliers
    m+ = dz+/dy+, m- = dz-/dy-. The backward pass carries the multipliers of the
    positive and negative groups in the D+ and D- slots of the gradient; the output
    of a ReLU or max-pool is one contribution per neuron (its dz, by sign).

Both rules satisfy summation-to-delta (Eq. 19) exactly up to float rounding:
``sum_i (x_i - x0_i) m_i = S_c(x) - S_c(x0)``; the error is reported per sample.
"""

from __future__ import annotations

import torch

from workers.errors import MethodError
from workers.explain.base import Attribution, Context, register
from workers.explain.baselines import baseline, default_blur_sigma
from workers.explain.canonize import COVERED, CheckedRuleMode, family_check
from workers.explain.engine import Rule
from workers.explain.rules.deeplift import (
    CastRule,
    RCAddRule,
    RCBatchNormRule,
    RCLinearRule,
    RCReLURule,
    RescaleMaxPoolRule,
    RescaleReLURule,
)
from workers.explain.rules.linear import CONV_ARGS, LINEAR_ARGS


def _rules(rule: str, n: int) -> dict[str, Rule]:
    """The per-call rules of the pass over the batch of ``n`` inputs (2N rows: Rescale, 4N: RevealCancel)."""
    if rule == "rescale":
        cast = CastRule()
        return {
            "relu": RescaleReLURule(n),
            "max_pool2d": RescaleMaxPoolRule(n),
            "conv2d": cast,
            "linear": cast,
            "batch_norm": cast,
        }
    if rule == "reveal_cancel":
        return {
            "relu": RCReLURule(n),
            "max_pool2d": RescaleMaxPoolRule(n, reveal_cancel=True),
            "conv2d": RCLinearRule(n, CONV_ARGS),
            "linear": RCLinearRule(n, LINEAR_ARGS),
            "batch_norm": RCBatchNormRule(n),
            "add": RCAddRule(),
        }
    raise MethodError(f"unknown deeplift rule {rule!r}")


def _meta(out: torch.Tensor, attr: torch.Tensor, t: torch.Tensor) -> list[dict]:
    """Per sample: S_c(x), S_c(x0), their difference and the summation-to-delta error (Eq. 19)."""
    n = attr.shape[0]
    s, s0 = out[:n].gather(1, t).squeeze(1), out[n : 2 * n].gather(1, t).squeeze(1)
    delta = s - s0
    total = attr.flatten(1).sum(1)
    meta = []
    for i in range(n):
        d, a = float(delta[i]), float(total[i])
        meta.append(
            {
                "score": float(s[i]),
                "reference_score": float(s0[i]),
                "delta": d,
                "attribution_sum": a,
                "summation_to_delta_error": a - d,
                "summation_to_delta_relative_error": abs(a - d) / max(abs(d), 1e-12),
            }
        )
    return meta


def deeplift(
    net: torch.nn.Module,
    x: torch.Tensor,
    x0: torch.Tensor,
    targets: torch.Tensor,
    rule: str = "rescale",
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, list[dict]]:
    """DeepLIFT attributions (N, C, H, W) of ``S_c(x) - S_c(x0)`` and per-sample summation-to-delta.

    The pass runs in ``dtype`` (default float64, float32 on MPS): the multipliers are ratios of
    differences and RevealCancel sums positive and negative partial contributions that are often
    ~100 times larger than the output difference; in float32 the rounding alone can break Eq. 19 by
    ~1e-4 relative. Parameters are cast per call; the model is not touched. The map comes back in
    the input's dtype."""
    n = x.shape[0]
    out_dtype = x.dtype
    if dtype is None:
        dtype = torch.float32 if x.device.type == "mps" else torch.float64
    x, x0 = x.detach().to(dtype), x0.detach().to(device=x.device, dtype=dtype)
    dx = x - x0
    t = targets.view(-1, 1)
    rules = _rules(rule, n)
    rc = rule == "reveal_cancel"
    with torch.enable_grad():
        xx = (torch.cat([x, x0, dx.clamp(min=0), dx.clamp(max=0)]) if rc else torch.cat([x, x0])).requires_grad_(True)
        with CheckedRuleMode(rules, COVERED["deeplift"], "deeplift"):
            out = net(xx)
        seed = torch.zeros_like(out)
        for k in (2, 3) if rc else (0,):  # the output rows whose gradient is the multiplier
            seed[k * n : (k + 1) * n].scatter_(1, t, 1.0)
        (g,) = torch.autograd.grad(out, xx, seed)
    attr = g[2 * n : 3 * n] * dx.clamp(min=0) + g[3 * n :] * dx.clamp(max=0) if rc else g[:n] * dx
    return attr.detach().to(out_dtype), _meta(out.detach(), attr, t)


@register("deeplift", applicable=family_check("deeplift"))
def deeplift_method(ctx: Context) -> Attribution:
    p = ctx.params
    ctx.progress(0.0)
    # contiguous: the blur comes back channels-last, and the float64 pass's rounding follows the layout
    x0 = baseline(ctx.model, ctx.x, p.baseline, blur_sigma=p.blur_sigma, seed=p.seed).contiguous()
    used: dict = {"baseline": p.baseline}
    if p.baseline == "uniform":
        used["seed"] = int(p.seed)
    elif p.baseline == "blur":
        used["blur_sigma"] = float(p.blur_sigma) if p.blur_sigma is not None else default_blur_sigma(ctx.x)
    dtype = torch.float64 if p.precision == "float64" and ctx.x.device.type != "mps" else torch.float32
    attr, meta = deeplift(ctx.net, ctx.x, x0, ctx.targets, p.rule, dtype)
    ctx.progress(1.0)
    return Attribution(
        attr, used_params={"rule": p.rule, **used, "precision": str(dtype).replace("torch.", "")}, meta=meta
    )
