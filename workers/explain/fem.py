"""FEM, the feature-based explanation method of Fuad et al. (§5.3, Eq. 26)."""

from __future__ import annotations

import torch

from workers.explain.base import Attribution, Context, Fusion, named_layer, register
from workers.explain.gradients import layer_output
from workers.explain.postprocess import resize


def fem_map(acts: torch.Tensor, k: float) -> torch.Tensor:
    """acts (N, K, h, w) -> (N, 1, h, w) in [0, 1].

    mu_k, sigma_k: mean and population std of each map; B_k = [A_k >= mu_k + K sigma_k];
    R = sum_k mu_k B_k, min-max normalised per sample (all-zero R stays zero)."""
    a = acts.float()
    mu = a.mean(dim=(2, 3), keepdim=True)
    sigma = a.std(dim=(2, 3), keepdim=True, unbiased=False)
    r = (mu * (a >= mu + k * sigma)).sum(dim=1, keepdim=True)
    flat = r.flatten(1)
    lo = flat.min(dim=1).values.view(-1, 1, 1, 1)
    hi = flat.max(dim=1).values.view(-1, 1, 1, 1)
    span = hi - lo
    return torch.where(span > 0, (r - lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(r))


def _fused(fp, call) -> torch.Tensor:
    with torch.inference_mode():
        return resize(fem_map(fp.activation(call.layer), call.params.k), fp.size).clone()


@register("fem", fuse=Fusion(_fused, layer=named_layer("fem")))
def fem(ctx: Context) -> Attribution:
    """No gradient and no classifier head: the forward pass stops at the layer (at its last
    call when a module is called more than once, the activation Grad-CAM uses)."""
    layer = ctx.model.resolve_layer(ctx.params.layer, "fem")
    with torch.inference_mode():
        acts = layer_output(ctx.model, layer, ctx.x)
        m = resize(fem_map(acts, ctx.params.k), ctx.x.shape[-2:])
    return Attribution(m.clone(), used_params={"layer": layer})
