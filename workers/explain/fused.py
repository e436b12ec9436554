"""Fused multi-method passes (issue 7): one forward pass for several methods on the same
images, and one backward pass per distinct backward rule over the kept graph.

The methods that fuse, and what they share:

===================  ==========================================================
``saliency``         plain backward, gradient w.r.t. the input x
``gradcam``          the same plain backward, gradient w.r.t. the captured A
``guided_backprop``  guided backward (1[x>0] * max(g, 0) at every rectifier)
``guided_gradcam``   guided backward times Grad-CAM from the plain backward
``deconvnet``        DeconvNet backward (max(g, 0) at every rectifier)
``fem``, ``cam``     the captured activation A only (no gradient)
===================  ==========================================================

Plus the predictions: the logits of the same forward pass. The forward runs once
with the input's gradient enabled; when a modified backward is needed it runs under
a :class:`~workers.explain.engine.RuleMode` whose rectifier rule saves the forward
mask and reads the backward rule of the *current* backward call from a switch, so
``torch.autograd.grad(..., retain_graph=True)`` can walk the same graph with the plain,
the guided and the DeconvNet rule in turn. Each rule is the one of
:mod:`workers.explain.relu_rules` (and autograd's own for the plain gradient), so a
fused map equals the single-method map up to float rounding (tests/test_fused.py).

Calls that do not fuse (other methods, the SmoothGrad modifier, a layer that does not
resolve, a method not applicable to the model) are left to
:func:`workers.explain.attribute`, which raises their errors.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch

from schemas.methods import CATALOG, Params
from workers.errors import ExplainError
from workers.explain.base import APPLICABILITY, IMPLEMENTATIONS, NO_PROGRESS, Attribution, Progress, target_scores
from workers.explain.fem import fem_map
from workers.explain.gradients import gradcam_from
from workers.explain.postprocess import resize
from workers.explain.relu_rules import rectifier_mode
from workers.models.hooks import LayerCapture
from workers.models.loading import LoadedModel

FUSABLE = ("saliency", "gradcam", "guided_backprop", "guided_gradcam", "deconvnet", "fem", "cam")
_LAYERED = ("gradcam", "guided_gradcam", "fem", "cam")


def call_key(name: str, params: dict | None) -> str:
    return name + json.dumps(params or {}, sort_keys=True)


@dataclass(frozen=True)
class FusedCall:
    """One method call the fused pass can serve: the validated params and the resolved layer."""

    key: str
    name: str
    params: Params
    layer: str | None = None


def plan_call(model: LoadedModel, name: str, params: dict[str, Any] | Params | None) -> FusedCall | None:
    """The call as the fused pass runs it, or None when it must go through ``attribute()``."""
    if name not in FUSABLE or name not in IMPLEMENTATIONS:
        return None
    try:
        p = params if isinstance(params, Params) else CATALOG[name].params.model_validate(params or {})
        if getattr(p, "smoothgrad", None) is not None:
            return None
        check = APPLICABILITY.get(name)
        if check is not None and check(model):
            return None
        layer = None
        if name == "cam":
            from workers.explain.linearization import cam_layer

            layer = cam_layer(model, p.layer)
        elif name in _LAYERED:
            layer = model.resolve_layer(p.layer, name)
    except (ExplainError, ValueError):
        return None  # attribute() reports it
    raw = params.model_dump(exclude_defaults=True) if isinstance(params, Params) else params
    return FusedCall(call_key(name, raw), name, p, layer)


# ---- the switchable rectifier ------------------------------------------------------------


class _Switch:
    """The backward rule of the backward pass now running: plain, guided or deconv."""

    def __init__(self) -> None:
        self.mode = "plain"


# ---- the fused pass ----------------------------------------------------------------------


class FusedPass:
    """One forward over ``x`` serving every call of ``calls``; then :meth:`explain` per target set.

    ``forward()`` returns the logits (the predictions come from them); ``explain(targets)``
    runs one backward per distinct rule and returns {call key: Attribution}."""

    def __init__(self, model: LoadedModel, x: torch.Tensor, calls: list[FusedCall]):
        self.model, self.x = model, x
        self.calls = list({c.key: c for c in calls}.values())
        names = {c.name for c in self.calls}
        self.need_x_plain = "saliency" in names
        self.need_guided = bool(names & {"guided_backprop", "guided_gradcam"})
        self.need_deconv = "deconvnet" in names
        self.grad_layers = sorted({c.layer for c in self.calls if c.name in ("gradcam", "guided_gradcam")})
        self.layers = sorted({c.layer for c in self.calls if c.layer is not None})
        self.x_grad = self.need_x_plain or self.need_guided or self.need_deconv
        self.needs_grad = self.x_grad or bool(self.grad_layers)
        self.switch = _Switch()
        self.logits: torch.Tensor | None = None
        self.acts: dict[str, torch.Tensor] = {}
        self._xi: torch.Tensor | None = None

    def forward(self) -> torch.Tensor:
        net = self.model.module
        caps = {name: LayerCapture(self.model.module_at(name), start_graph=not self.x_grad) for name in self.layers}
        with ExitStack() as stack:
            for c in caps.values():
                stack.enter_context(c)
            if not self.needs_grad:
                with torch.inference_mode():
                    logits = net(self.x)
            else:
                with torch.enable_grad():
                    xi = self.x.detach().requires_grad_(self.x_grad)
                    if self.need_guided or self.need_deconv:
                        with rectifier_mode(self.switch):
                            logits = net(xi)
                    else:
                        logits = net(xi)
                self._xi = xi
        for name, c in caps.items():
            self.acts[name] = c.result(f"layer {name!r}")
        self.logits = logits
        return logits.detach()

    def explain(
        self, targets: torch.Tensor, live: torch.Tensor | None = None, progress: Progress = NO_PROGRESS
    ) -> dict[str, Attribution]:
        """Attributions of every call for ``targets`` (N,); ``live`` (N,) bool: the samples whose
        gradients are wanted (the others get maps too, of no use). One backward per rule."""
        if self.logits is None:
            self.forward()
        size = tuple(self.x.shape[-2:])
        targets = targets.to(self.x.device)
        grads: dict[str, torch.Tensor] = {}
        cams: dict[str, torch.Tensor] = {}
        if self.needs_grad:
            s = target_scores(self.logits, targets)
            score = (s[live] if live is not None else s).sum()
            passes = []
            if self.need_x_plain or self.grad_layers:
                passes.append("plain")
            if self.need_guided:
                passes.append("guided")
            if self.need_deconv:
                passes.append("deconv")
            for k, mode in enumerate(passes):
                self.switch.mode = mode
                keep = k < len(passes) - 1
                with torch.enable_grad():
                    if mode == "plain":
                        inputs = ([self._xi] if self.need_x_plain else []) + [self.acts[n] for n in self.grad_layers]
                        out = torch.autograd.grad(score, inputs, retain_graph=keep)
                        if self.need_x_plain:
                            grads["plain"], out = out[0], out[1:]
                        for name, g in zip(self.grad_layers, out):
                            cams[name] = gradcam_from(self.acts[name], g)
                    else:
                        (grads[mode],) = torch.autograd.grad(score, self._xi, retain_graph=keep)
                progress((k + 1) / (len(passes) + 1))
            self.switch.mode = "plain"
            self.logits = self.logits.detach()  # the graph is freed after the last backward
        out: dict[str, Attribution] = {}
        for c in self.calls:
            used = {"layer": c.layer} if c.layer is not None else {}
            if c.name == "saliency":
                m = grads["plain"]
            elif c.name == "guided_backprop":
                m = grads["guided"]
            elif c.name == "deconvnet":
                m = grads["deconv"]
            elif c.name == "gradcam":
                m = resize(cams[c.layer], size)
            elif c.name == "guided_gradcam":
                m = grads["guided"] * resize(cams[c.layer], size)
            elif c.name == "fem":
                with torch.inference_mode():
                    m = resize(fem_map(self.acts[c.layer].detach(), c.params.k), size).clone()
            elif c.name == "cam":
                from workers.explain.linearization import cam_from, find_gap_linear_head

                lin = find_gap_linear_head(self.model).linear
                with torch.inference_mode():
                    m = resize(cam_from(lin, self.acts[c.layer].detach(), targets), size).clone()
            else:  # pragma: no cover - plan_call admits only FUSABLE
                raise KeyError(c.name)
            out[c.key] = Attribution(m.detach(), used_params=used)
        progress(1.0)
        return out


def fused_attribute(
    model: LoadedModel, x: torch.Tensor, targets: torch.Tensor | int, calls: list[tuple[str, dict | None]]
) -> tuple[torch.Tensor, list[Attribution]]:
    """(logits, one Attribution per call in order) with the calls fused where they can be;
    the others run through :func:`workers.explain.attribute` (the library entry point of
    the fused path, used by the benchmarks and the tests)."""
    from workers.explain import attribute

    x = x.to(model.device)
    if isinstance(targets, int):
        targets = torch.full((x.shape[0],), targets, dtype=torch.long, device=x.device)
    plans = [plan_call(model, name, params) for name, params in calls]
    fused = [p for p in plans if p is not None]
    results: dict[str, Attribution] = {}
    if fused:
        fp = FusedPass(model, x, fused)
        logits = fp.forward()
        results = fp.explain(targets)
    else:
        with torch.inference_mode():
            logits = model.module(x)
    atts = []
    for (name, params), p in zip(calls, plans):
        atts.append(results[p.key] if p is not None else attribute(model, x, targets, name, params))
    return logits, atts
