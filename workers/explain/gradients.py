"""Plain-gradient methods: saliency (§4.2) and Grad-CAM (§4.6)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from workers.explain.base import Attribution, Context, LayerCapture, input_gradient, register, target_scores


@register("saliency")
def saliency(ctx: Context) -> Attribution:
    """Eq. 5-6: the gradient dS_c/dx; the map is max over channels of its absolute value (reduce max_abs)."""
    grad, _ = input_gradient(ctx.net, ctx.x, ctx.targets)
    return Attribution(grad)


def gradcam_at(ctx: Context, layer: str) -> torch.Tensor:
    """Grad-CAM at the layer's resolution (N, 1, h, w), after the ReLU of Eq. 10."""
    with torch.enable_grad(), LayerCapture(ctx.model.module_at(layer)) as cap:
        logits = ctx.net(ctx.x)
        acts = cap.output
        (grads,) = torch.autograd.grad(target_scores(logits, ctx.targets).sum(), acts)
    alpha = grads.mean(dim=(2, 3), keepdim=True)  # Eq. 9
    return F.relu((alpha * acts.detach()).sum(dim=1, keepdim=True))  # Eq. 10


def upsample(m: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(m.shape[-2:]) == tuple(size):
        return m
    return F.interpolate(m, size=size, mode="bilinear", align_corners=False)


@register("gradcam")
def gradcam(ctx: Context) -> Attribution:
    layer = ctx.model.resolve_layer(ctx.params.layer, "gradcam")
    cam = gradcam_at(ctx, layer)
    return Attribution(upsample(cam, ctx.x.shape[-2:]), used_params={"layer": layer})
