"""Fused multi-method passes (issue 7): one forward pass for several methods on the same
images, and one backward pass per distinct backward rule over the kept graph.

A method fuses when it registers a :class:`~workers.explain.base.Fusion` (``register(name,
fuse=...)``, next to its implementation): the backward rules whose input gradient it needs,
its layer, whether it needs the plain gradient at that layer, and how its map is computed
from what the pass kept. Today: saliency (plain backward, gradient w.r.t. x), Grad-CAM (the
same plain backward, gradient w.r.t. the captured A), guided backprop and DeconvNet (their
rectifier rules), guided Grad-CAM (guided backward times Grad-CAM), FEM and CAM (the captured
activation only, no gradient).

Plus the predictions: the logits of the same forward pass. The forward runs once
with the input's gradient enabled; when a modified backward is needed it runs under
a :class:`~workers.explain.engine.RuleMode` whose rectifier rule saves the forward
mask and reads the backward rule of the *current* backward call from a switch, so
``torch.autograd.grad(..., retain_graph=True)`` can walk the same graph with the plain,
the guided and the DeconvNet rule in turn. Each rule is the one of
:mod:`workers.explain.rules.relu` (and autograd's own for the plain gradient), so a
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
from workers.explain.attribution import attribute
from workers.explain.base import (
    APPLICABILITY,
    FUSIONS,
    IMPLEMENTATIONS,
    NO_PROGRESS,
    Attribution,
    Progress,
    target_scores,
)
from workers.explain.gradients import gradcam_from
from workers.explain.rules.relu import rectifier_mode
from workers.models.hooks import LayerCapture
from workers.models.loading import LoadedModel

PASSES = ("plain", "guided", "deconv")  # the backward rules, in the order the backward passes run


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
    fusion = FUSIONS.get(name)
    if fusion is None or name not in IMPLEMENTATIONS:
        return None
    try:
        p = params if isinstance(params, Params) else CATALOG[name].params.model_validate(params or {})
        if getattr(p, "smoothgrad", None) is not None:
            return None
        check = APPLICABILITY.get(name)
        if check is not None and check(model):
            return None
        layer = fusion.layer(model, p) if fusion.layer is not None else None
    except (ExplainError, ValueError):
        return None  # attribute() reports it
    raw = params.model_dump(exclude_defaults=True) if isinstance(params, Params) else params
    return FusedCall(call_key(name, raw), name, p, layer)


class _Switch:
    """The backward rule of the backward pass now running: plain, guided or deconv."""

    def __init__(self) -> None:
        self.mode = "plain"


class FusedPass:
    """One forward over ``x`` serving every call of ``calls``; then :meth:`explain` per target set.

    ``forward()`` returns the logits (the predictions come from them); ``explain(targets)``
    runs one backward per distinct rule and returns {call key: Attribution}. A call's map is
    its method's ``Fusion.compute(self, call)``, reading :meth:`input_grad`, :meth:`gradcam`,
    :meth:`activation`, ``targets`` and ``size``."""

    def __init__(self, model: LoadedModel, x: torch.Tensor, calls: list[FusedCall]):
        self.model, self.x = model, x
        self.calls = list({c.key: c for c in calls}.values())
        rules = {r for c in self.calls for r in FUSIONS[c.name].input_grads}
        self.grad_layers = sorted({c.layer for c in self.calls if FUSIONS[c.name].layer_grad})
        self.layers = sorted({c.layer for c in self.calls if c.layer is not None})
        self.need_x_plain = "plain" in rules
        self.x_grad = bool(rules)
        self.needs_grad = self.x_grad or bool(self.grad_layers)
        self.rectified = bool(rules - {"plain"})  # a modified backward: the forward runs under the rule
        self.passes = [r for r in PASSES if r in rules or (r == "plain" and self.grad_layers)]
        self.size = tuple(x.shape[-2:])
        self.switch = _Switch()
        self.logits: torch.Tensor | None = None
        self.acts: dict[str, torch.Tensor] = {}
        self.targets: torch.Tensor | None = None
        self._xi: torch.Tensor | None = None
        self._grads: dict[str, torch.Tensor] = {}
        self._cams: dict[str, torch.Tensor] = {}

    def forward(self) -> torch.Tensor:
        caps = {name: LayerCapture(self.model.module_at(name), start_graph=not self.x_grad) for name in self.layers}
        with ExitStack() as stack:
            for c in caps.values():
                stack.enter_context(c)
            logits = self._run()
        for name, c in caps.items():
            self.acts[name] = c.result(f"layer {name!r}")
        self.logits = logits
        return logits.detach()

    def _run(self) -> torch.Tensor:
        net = self.model.module
        if not self.needs_grad:
            with torch.inference_mode():
                return net(self.x)
        with torch.enable_grad():
            self._xi = self.x.detach().requires_grad_(self.x_grad)
            if self.rectified:
                with rectifier_mode(self.switch):
                    return net(self._xi)
            return net(self._xi)

    def explain(
        self, targets: torch.Tensor, live: torch.Tensor | None = None, progress: Progress = NO_PROGRESS
    ) -> dict[str, Attribution]:
        """Attributions of every call for ``targets`` (N,); ``live`` (N,) bool: the samples whose
        gradients are wanted (the others get maps too, of no use). One backward per rule."""
        if self.logits is None:
            self.forward()
        self.targets = targets.to(self.x.device)
        self._grads, self._cams = {}, {}
        if self.needs_grad:
            self._backward(live, progress)
        out = {c.key: self._attribution(c) for c in self.calls}
        progress(1.0)
        return out

    def _backward(self, live: torch.Tensor | None, progress: Progress) -> None:
        s = target_scores(self.logits, self.targets)
        score = (s[live] if live is not None else s).sum()
        for k, mode in enumerate(self.passes):
            self.switch.mode = mode
            with torch.enable_grad():
                self._grad_pass(mode, score, retain=k < len(self.passes) - 1)
            progress((k + 1) / (len(self.passes) + 1))
        self.switch.mode = "plain"
        self.logits = self.logits.detach()  # the graph is freed after the last backward

    def _grad_pass(self, mode: str, score: torch.Tensor, retain: bool) -> None:
        """One backward under rule ``mode``; the plain one also gives dS_c/dA of the Grad-CAM layers."""
        if mode != "plain":
            (self._grads[mode],) = torch.autograd.grad(score, self._xi, retain_graph=retain)
            return
        inputs = ([self._xi] if self.need_x_plain else []) + [self.acts[n] for n in self.grad_layers]
        out = torch.autograd.grad(score, inputs, retain_graph=retain)
        if self.need_x_plain:
            self._grads["plain"], out = out[0], out[1:]
        for name, g in zip(self.grad_layers, out):
            self._cams[name] = gradcam_from(self.acts[name], g)

    def _attribution(self, c: FusedCall) -> Attribution:
        m = FUSIONS[c.name].compute(self, c)
        return Attribution(m.detach(), used_params={"layer": c.layer} if c.layer is not None else {})

    # ---- what a Fusion.compute reads ----
    def input_grad(self, rule: str) -> torch.Tensor:
        """dS_c/dx under backward rule ``rule`` (plain, guided, deconv)."""
        return self._grads[rule]

    def gradcam(self, layer: str) -> torch.Tensor:
        """Grad-CAM at ``layer``'s resolution (N, 1, h, w), from the plain backward."""
        return self._cams[layer]

    def activation(self, layer: str) -> torch.Tensor:
        """The captured output A of ``layer`` (detached)."""
        return self.acts[layer].detach()


def fused_attribute(
    model: LoadedModel, x: torch.Tensor, targets: torch.Tensor | int, calls: list[tuple[str, dict | None]]
) -> tuple[torch.Tensor, list[Attribution]]:
    """(logits, one Attribution per call in order) with the calls fused where they can be;
    the others run through :func:`workers.explain.attribute` (the library entry point of
    the fused path, used by the benchmarks and the tests)."""
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
