"""Plain-gradient methods: saliency (§4.2) and Grad-CAM (§4.6)."""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

from workers.explain.base import Attribution, Context, Fusion, input_gradient, named_layer, register, target_scores
from workers.explain.postprocess import resize
from workers.models.hooks import LayerCapture


@register("saliency", fuse=Fusion(lambda fp, call: fp.input_grad("plain"), input_grads=("plain",)))
def saliency(ctx: Context) -> Attribution:
    """Eq. 5-6: the gradient dS_c/dx; the map is max over channels of its absolute value (reduce max_abs)."""
    grad, _ = input_gradient(ctx.net, ctx.x, ctx.targets)
    return Attribution(grad)


def gradcam_from(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Grad-CAM (N, 1, h, w) from the activation A (N, K, h, w) and dS_c/dA: the one formula of
    the single and the fused path."""
    alpha = grads.mean(dim=(2, 3), keepdim=True)  # Eq. 9
    return F.relu((alpha * acts.detach()).sum(dim=1, keepdim=True))  # Eq. 10


def gradcam_at(ctx: Context, layer: str) -> torch.Tensor:
    """Grad-CAM at the layer's resolution (N, 1, h, w), after the ReLU of Eq. 10."""
    with torch.enable_grad(), LayerCapture(ctx.model.module_at(layer)) as cap:
        logits = ctx.net(ctx.x)
        acts = cap.result(f"layer {layer!r}")
        (grads,) = torch.autograd.grad(target_scores(logits, ctx.targets).sum(), acts)
    return gradcam_from(acts, grads)


@register(
    "gradcam",
    fuse=Fusion(
        lambda fp, call: resize(fp.gradcam(call.layer), fp.size), layer=named_layer("gradcam"), layer_grad=True
    ),
)
def gradcam(ctx: Context) -> Attribution:
    layer = ctx.model.resolve_layer(ctx.params.layer, "gradcam")
    cam = gradcam_at(ctx, layer)
    return Attribution(resize(cam, ctx.x.shape[-2:]), used_params={"layer": layer})


# ---- the forward pass up to a layer (FEM, CAM: no gradient, no classifier head) ----------

_CALLS: weakref.WeakKeyDictionary[torch.nn.Module, dict[str, int]] = weakref.WeakKeyDictionary()


def calls_per_forward(model, layer: str) -> int:
    """How many times the module ``layer`` is called in one forward pass (a ResNet block's
    ``relu`` module is called twice); probed once per model and layer, then cached."""
    net = model.module
    known = _CALLS.get(net)
    if known is None:
        known = _CALLS[net] = {}
    if layer not in known:
        with torch.inference_mode(), LayerCapture(model.module_at(layer)) as probe:
            net(torch.zeros(1, model.channels, *model.input_size, device=model.device))
        known[layer] = probe.calls
    return known[layer]


def layer_output(model, layer: str, x: torch.Tensor) -> torch.Tensor:
    """The output of the *last* call of module ``layer`` (the activation Grad-CAM differentiates),
    running the network no further than that call. Call under ``torch.inference_mode()``."""
    with LayerCapture(model.module_at(layer), stop_after=calls_per_forward(model, layer)) as cap:
        model.module(x)
    return cap.result(f"layer {layer!r}")
