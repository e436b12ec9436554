"""The linearization family (§4), modified backward passes: DeconvNet, guided backpropagation and
guided Grad-CAM here; saliency and Grad-CAM in :mod:`workers.explain.gradients`, CAM in
:mod:`workers.explain.cam`, integrated gradients in :mod:`workers.explain.integrated`, SmoothGrad
in :mod:`workers.explain.smooth`, the per-call rectifier rules in :mod:`workers.explain.rules.relu`
(see docs/architecture.md)."""

from __future__ import annotations

import torch

from workers.explain.base import Attribution, Context, Fusion, named_layer, register, target_scores
from workers.explain.fused import FusedCall, FusedPass
from workers.explain.postprocess import resize
from workers.explain.rules.relu import rectifier_mode


def rule_gradient(ctx: Context, guided: bool) -> torch.Tensor:
    """dS_c/dx with every rectifier call's backward replaced (guided backprop or DeconvNet)."""
    with torch.enable_grad():
        xi = ctx.x.detach().requires_grad_(True)
        with rectifier_mode(guided):
            logits = ctx.net(xi)
        (grad,) = torch.autograd.grad(target_scores(logits, ctx.targets).sum(), xi)
    return grad


@register("deconvnet", fuse=Fusion(lambda fp, call: fp.input_grad("deconv"), input_grads=("deconv",)))
def deconvnet(ctx: Context) -> Attribution:
    return Attribution(rule_gradient(ctx, guided=False))


@register("guided_backprop", fuse=Fusion(lambda fp, call: fp.input_grad("guided"), input_grads=("guided",)))
def guided_backprop(ctx: Context) -> Attribution:
    return Attribution(rule_gradient(ctx, guided=True))


def _guided_gradcam(fp, call) -> torch.Tensor:
    return fp.input_grad("guided") * resize(fp.gradcam(call.layer), fp.size)


@register(
    "guided_gradcam",
    fuse=Fusion(_guided_gradcam, input_grads=("guided",), layer=named_layer("guided_gradcam"), layer_grad=True),
)
def guided_gradcam(ctx: Context) -> Attribution:
    """§4.6.1: guided backprop (N, C, H, W) times Grad-CAM (Eq. 10) upsampled bilinearly."""
    layer = ctx.model.resolve_layer(ctx.params.layer, "guided_gradcam")
    # one forward pass for both factors: a plain backward to the layer (Grad-CAM) and a
    # guided backward to the input over the same graph (workers.explain.fused; the same
    # rules as rule_gradient and gradcam_at, tests/test_fused.py checks the product)
    fp = FusedPass(ctx.model, ctx.x, [FusedCall("guided_gradcam", "guided_gradcam", ctx.params, layer)])
    fp.forward()
    return fp.explain(ctx.targets, progress=ctx.progress)["guided_gradcam"]
