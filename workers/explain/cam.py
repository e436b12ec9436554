"""CAM, the class activation map of Zhou et al. (§4.6): sum_k w_{c,k} A_k for models whose logits
are a linear layer over the global average pool of a feature map; the check that a model has
such a head, per layer, runs once per network (see docs/architecture.md)."""

from __future__ import annotations

import weakref
from contextlib import ExitStack

import torch
import torch.nn as nn

from workers.errors import MethodError
from workers.explain.base import Attribution, Context, Fusion, register
from workers.explain.gradients import layer_output
from workers.explain.postprocess import resize
from workers.models.hooks import LayerCapture, forward_hooks
from workers.models.loading import LoadedModel


class _Head:
    """What the check found: per layer, the reason CAM cannot use it (None: it can)."""

    def __init__(self, linear: nn.Linear | None, linear_name: str | None, reasons: dict[str, str | None]):
        self.linear, self.linear_name, self.reasons = linear, linear_name, reasons


_HEADS: weakref.WeakKeyDictionary[nn.Module, _Head] = weakref.WeakKeyDictionary()


def find_gap_linear_head(model: LoadedModel) -> _Head:
    """Run the network once on seeded random input and find, for every feature-map layer,
    whether the model's output is ``Linear(GAP(layer output))``: the last ``nn.Linear``
    called produces the logits and its input equals the spatial mean of the layer's output
    (last call of the module), so nothing but flatten/view/identity lies between them."""
    net = model.module
    head = _HEADS.get(net)
    if head is not None:
        return head
    lin_calls: list[tuple[str, nn.Linear, torch.Tensor, torch.Tensor]] = []

    def linear_call(name: str):
        def hook(m, inp, out):
            lin_calls.append((name, m, inp[0].detach().clone(), out.detach()))

        return hook

    linears = [(mod, linear_call(name)) for name, mod in net.named_modules() if isinstance(mod, nn.Linear)]
    g = torch.Generator().manual_seed(0)
    x = torch.randn((2, model.channels, *model.input_size), generator=g).to(model.device)
    caps = {name: LayerCapture(net.get_submodule(name)) for name in model.layers}
    with ExitStack() as stack, torch.inference_mode():
        for c in caps.values():
            stack.enter_context(c)
        stack.enter_context(forward_hooks(linears))
        logits = net(x)
    acts = {name: c.output for name, c in caps.items() if c.output is not None}
    reasons: dict[str, str | None] = {}
    if not lin_calls:
        head = _Head(None, None, {n: "the model has no nn.Linear classifier" for n in model.layers})
        _HEADS[net] = head
        return head
    lname, lin, lin_in, lin_out = lin_calls[-1]
    if lin_out.shape != logits.shape or not torch.allclose(lin_out, logits, rtol=1e-5, atol=1e-6):
        head = _Head(
            None, lname, {n: f"the logits are not the output of the last Linear layer {lname!r}" for n in model.layers}
        )
        _HEADS[net] = head
        return head
    for name in model.layers:
        a = acts.get(name)
        if a is None or a.dim() != 4:
            reasons[name] = f"layer {name!r} was not reached in the forward pass"
            continue
        gap = a.float().mean(dim=(2, 3))
        if lin_in.dim() != 2 or lin_in.shape != gap.shape:
            reasons[name] = (
                f"the last Linear layer {lname!r} takes {tuple(lin_in.shape[1:])} features, not the "
                f"global average pool of {name!r} ({a.shape[1]} channels of {a.shape[2]}x{a.shape[3]})"
            )
            continue
        scale = float(gap.abs().max()) or 1.0
        if not torch.allclose(lin_in.float(), gap, rtol=1e-4, atol=1e-5 * scale):
            reasons[name] = (
                f"the input of the last Linear layer {lname!r} is not the global average pool of "
                f"{name!r}'s output (another operation lies between them)"
            )
            continue
        reasons[name] = None
    head = _Head(lin, lname, reasons)
    _HEADS[net] = head
    return head


def cam_layer(model: LoadedModel, layer: str | None) -> str:
    """The layer CAM uses: the one asked for (it must feed the head), else the model's
    default layer, else the last layer whose GAP feeds the head. Raises MethodError."""
    head = find_gap_linear_head(model)
    if layer is not None:
        name = model.resolve_layer(layer, "cam")
        reason = head.reasons.get(name)
        if reason:
            raise MethodError(
                f"cam needs a global-average-pool -> linear head on layer {name!r}: {reason}", field="layer"
            )
        return name
    default = model.entry.target_layer or model.default_layer
    if default is not None and head.reasons.get(default) is None and default in head.reasons:
        return default
    ok = [n for n, r in head.reasons.items() if r is None]
    if ok:
        return ok[-1]
    if default is None:
        raise MethodError(f"cam needs a convolutional layer and model {model.name!r} has none")
    raise MethodError(f"cam needs a global-average-pool -> linear head: {head.reasons.get(default)}")


def cam_applicable(model: LoadedModel) -> str | None:
    try:
        cam_layer(model, None)
    except MethodError as e:
        return e.detail
    return None


def cam_at(ctx: Context, layer: str) -> torch.Tensor:
    """sum_k w_{c,k} A_k at the layer's resolution (N, 1, h, w), signed (Zhou et al., no ReLU)."""
    lin = find_gap_linear_head(ctx.model).linear
    with torch.inference_mode():  # no gradient; the forward pass stops at the layer's last call
        a = layer_output(ctx.model, layer, ctx.x)
        return cam_from(lin, a, ctx.targets)


def cam_from(lin: nn.Linear, a: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """sum_k w_{c,k} A_k per sample from the activation A (N, K, h, w) (shared with the fused pass)."""
    w = lin.weight[targets].to(a.dtype)  # (N, K)
    return torch.einsum("nk,nkhw->nhw", w, a).unsqueeze(1)


def _fused(fp, call) -> torch.Tensor:
    lin = find_gap_linear_head(fp.model).linear
    with torch.inference_mode():
        return resize(cam_from(lin, fp.activation(call.layer), fp.targets), fp.size).clone()


@register("cam", applicable=cam_applicable, fuse=Fusion(_fused, layer=lambda model, p: cam_layer(model, p.layer)))
def cam(ctx: Context) -> Attribution:
    layer = cam_layer(ctx.model, ctx.params.layer)
    m = resize(cam_at(ctx, layer), ctx.x.shape[-2:])
    return Attribution(m.clone(), used_params={"layer": layer})
