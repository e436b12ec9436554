"""Per-method timings: ours (``workers.explain.attribute``) against Captum 0.9 / Zennit 1.0 on
the same network, input, target, parameters and thread count, next to the physical floor
measured in the same run (forward only, forward + backward to the input, forward up to
the CAM/FEM layer); and the six-method request fused against the separate calls."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import interleaved, reference_copy
from workers.explain import attribute
from workers.explain.base import target_scores
from workers.explain.gradients import layer_output

SIX = ["saliency", "deconvnet", "guided_backprop", "gradcam", "guided_gradcam", "fem"]


@dataclass
class Env:
    """What the reference builders see: our model, the reference copy of its network, the
    inputs (a separate copy for the references: Captum sets requires_grad on its input)."""

    model: Any
    ref: torch.nn.Module
    x: torch.Tensor
    x_ref: torch.Tensor
    t: torch.Tensor
    layer: str

    @property
    def ref_layer(self) -> torch.nn.Module:
        return self.ref.get_submodule(self.layer)

    @property
    def black(self) -> torch.Tensor:
        lo, _ = self.model.input_bounds()
        return lo.expand_as(self.x).contiguous()

    @property
    def gray(self) -> torch.Tensor:
        m, s = self.model.mean_std()
        return ((0.5 - m) / s).expand_as(self.x).contiguous()

    def canonizers(self) -> list:
        from zennit.torchvision import ResNetCanonizer, VGGCanonizer

        name = self.model.entry.architecture
        if "resnet" in name:
            return [ResNetCanonizer()]
        if "_bn" in name:
            return [VGGCanonizer()]
        return []


@dataclass
class Case:
    method: str
    params: dict
    label: str
    ref_name: str | None = None
    ref: Callable[[Env], Callable[[], Any]] | None = None
    floor: str = "fwd_bwd"  # fwd | fwd_bwd | to_layer
    heavy: bool = False  # skipped by --quick
    batch8: bool = True  # also run at batch > 1 in --quick


# ---- reference builders ---------------------------------------------------------------------


def _captum(cls_name: str, layer: bool = False, **kw):
    def build(e: Env):
        import captum.attr as ca

        cls = getattr(ca, cls_name)
        algo = cls(e.ref, e.ref_layer) if layer else cls(e.ref)
        return lambda: algo.attribute(e.x_ref, target=e.t, **kw)

    return build


def _gradcam(e: Env):
    from captum.attr import LayerAttribution, LayerGradCam

    algo = LayerGradCam(e.ref, e.ref_layer)
    size = tuple(e.x.shape[-2:])
    return lambda: LayerAttribution.interpolate(
        algo.attribute(e.x_ref, target=e.t, relu_attributions=True), size, "bilinear"
    )


def _ig(e: Env):
    from captum.attr import IntegratedGradients

    algo = IntegratedGradients(e.ref)
    base = e.black
    return lambda: algo.attribute(
        e.x_ref, baselines=base, target=e.t, n_steps=50, method="riemann_trapezoid", internal_batch_size=16
    )


def _smoothgrad(e: Env):
    from captum.attr import NoiseTunnel, Saliency

    algo = NoiseTunnel(Saliency(e.ref))
    flat = e.x.flatten(1)
    sigma = float((0.15 * (flat.max(1).values - flat.min(1).values)).mean())
    return lambda: algo.attribute(
        e.x_ref, nt_type="smoothgrad", nt_samples=25, nt_samples_batch_size=16, stdevs=sigma, target=e.t, abs=False
    )


def _deeplift(e: Env):
    from captum.attr import DeepLift

    algo = DeepLift(e.ref)
    base = e.black
    return lambda: algo.attribute(e.x_ref, baselines=base, target=e.t)


def _occlusion(window: int, stride: int, ppe: int | None):
    def build(e: Env):
        from captum.attr import Occlusion

        from workers.explain.perturb_utils import batch_for

        algo = Occlusion(e.ref)
        c = e.x.shape[1]
        per_eval = ppe or batch_for(e.x)
        fill = e.gray
        return lambda: algo.attribute(
            e.x_ref,
            sliding_window_shapes=(c, window, window),
            strides=(c, stride, stride),
            baselines=fill,
            target=e.t,
            perturbations_per_eval=per_eval,
        )

    return build


def _lime(samples: int, segments: int):
    def build(e: Env):
        from captum._utils.models.linear_model import SkLearnRidge
        from captum.attr import Lime

        from workers.explain import lime as L

        masks = [
            torch.from_numpy(L.segment(e.model, e.x[i], "slic", segments)).long()[None, None]
            for i in range(e.x.shape[0])
        ]
        algo = Lime(e.ref, interpretable_model=SkLearnRidge(alpha=1.0))

        def run():
            for i, mask in enumerate(masks):
                algo.attribute(
                    e.x_ref[i : i + 1],
                    target=e.t[i : i + 1],
                    feature_mask=mask.expand_as(e.x_ref[i : i + 1]),
                    n_samples=samples,
                )

        return run

    return build


def _zennit(kind: str):
    def build(e: Env):
        from zennit.attribution import Gradient
        from zennit.composites import (
            EpsilonGammaBox,
            EpsilonPlusFlat,
            LayerMapComposite,
            SpecialFirstLayerMapComposite,
            layer_map_base,
        )
        from zennit.rules import Epsilon, Gamma, ZBox, ZPlus
        from zennit.types import Convolution, Linear

        lo, hi = e.model.input_bounds()
        lo, hi = lo.expand_as(e.x), hi.expand_as(e.x)

        def composite():
            canon = e.canonizers()
            if kind == "epsilon":
                return LayerMapComposite(
                    layer_map=layer_map_base() + [(Convolution, Epsilon(0.25)), (torch.nn.Linear, Epsilon(0.25))],
                    canonizers=canon,
                )
            if kind == "gamma":
                return LayerMapComposite(
                    layer_map=layer_map_base() + [(Convolution, Gamma(0.25)), (torch.nn.Linear, Gamma(0.25))],
                    canonizers=canon,
                )
            if kind == "epsilon_gamma_box":
                return EpsilonGammaBox(low=lo, high=hi, epsilon=0.25, gamma=0.25, canonizers=canon)
            if kind == "epsilon_plus_flat":
                return EpsilonPlusFlat(epsilon=0.25, canonizers=canon)
            if kind == "deep_taylor":
                return SpecialFirstLayerMapComposite(
                    layer_map=layer_map_base() + [(Linear, ZPlus(zero_params="bias"))],
                    first_map=[(Linear, ZBox(lo, hi, zero_params="bias"))],
                    canonizers=canon,
                )
            raise KeyError(kind)

        def run():
            with Gradient(e.ref, composite()) as attributor:
                attributor(
                    e.x_ref.detach().clone().requires_grad_(True),
                    lambda out: F.one_hot(e.t, out.shape[1]).to(out) * out,
                )

        return run

    return build


def cases(occ_window: int = 16, occ_stride: int = 8, lime_samples: int = 500) -> list[Case]:
    occ = {"window": occ_window, "stride": occ_stride, "fill": "gray"}
    return [
        Case("saliency", {}, "saliency", "Captum Saliency", _captum("Saliency", abs=False)),
        Case("deconvnet", {}, "deconvnet", "Captum Deconvolution", _captum("Deconvolution")),
        Case("guided_backprop", {}, "guided_backprop", "Captum GuidedBackprop", _captum("GuidedBackprop")),
        Case("gradcam", {}, "gradcam", "Captum LayerGradCam + interpolate", _gradcam),
        Case(
            "guided_gradcam",
            {},
            "guided_gradcam",
            "Captum GuidedGradCam",
            _captum("GuidedGradCam", layer=True, interpolate_mode="bilinear"),
        ),
        Case("fem", {}, "fem", None, None, floor="to_layer"),
        Case("cam", {}, "cam", None, None, floor="to_layer"),
        Case(
            "integrated_gradients",
            {},
            "integrated_gradients (50 steps, chunk 16)",
            "Captum IntegratedGradients",
            _ig,
            heavy=False,
            batch8=False,
        ),
        Case(
            "smoothgrad",
            {},
            "smoothgrad (25 samples, chunk 16)",
            "Captum NoiseTunnel(Saliency)",
            _smoothgrad,
            batch8=False,
        ),
        Case("deeplift", {}, "deeplift (float64, default)", "Captum DeepLift", _deeplift),
        Case("deeplift", {"precision": "float32"}, "deeplift (float32)", "Captum DeepLift", _deeplift),
        Case("lrp", {"rule": "epsilon"}, "lrp epsilon", "Zennit Epsilon", _zennit("epsilon")),
        Case("lrp", {"rule": "gamma"}, "lrp gamma", "Zennit Gamma", _zennit("gamma")),
        Case(
            "lrp",
            {"composite": "epsilon_plus_flat"},
            "lrp epsilon_plus_flat",
            "Zennit EpsilonPlusFlat",
            _zennit("epsilon_plus_flat"),
        ),
        Case(
            "lrp",
            {"composite": "epsilon_gamma_box"},
            "lrp epsilon_gamma_box",
            "Zennit EpsilonGammaBox",
            _zennit("epsilon_gamma_box"),
        ),
        Case("deep_taylor", {}, "deep_taylor (zbox)", "Zennit DTD (ZBox + ZPlus)", _zennit("deep_taylor")),
        Case(
            "occlusion",
            occ,
            f"occlusion {occ_window}/{occ_stride}",
            "Captum Occlusion (ppe=1, default)",
            _occlusion(occ_window, occ_stride, 1),
            floor="fwd",
            batch8=False,
        ),
        Case(
            "occlusion",
            occ,
            f"occlusion {occ_window}/{occ_stride}",
            "Captum Occlusion (ppe = our chunk)",
            _occlusion(occ_window, occ_stride, None),
            floor="fwd",
            batch8=False,
        ),
        Case(
            "lime",
            {"samples": lime_samples},
            f"lime ({lime_samples} samples)",
            "Captum Lime (ppe=1, same superpixels)",
            _lime(lime_samples, 50),
            floor="fwd",
            heavy=True,
            batch8=False,
        ),
    ]


# ---- running ------------------------------------------------------------------------------


def floors(e: Env) -> dict[str, Callable[[], Any]]:
    net, x, t = e.model.module, e.x, e.t

    def fwd():
        with torch.inference_mode():
            net(x)

    def fwd_bwd():
        with torch.enable_grad():
            xi = x.detach().requires_grad_(True)
            torch.autograd.grad(target_scores(net(xi), t).sum(), xi)

    def to_layer():
        with torch.inference_mode():
            layer_output(e.model, e.layer, x)

    return {"fwd": fwd, "fwd_bwd": fwd_bwd, "to_layer": to_layer}


def make_env(model, x, t) -> Env:
    layer = model.entry.target_layer or model.default_layer
    return Env(model=model, ref=reference_copy(model.module), x=x, x_ref=x.clone(), t=t, layer=layer)


def run_cases(model, x, t, selected: list[Case], runs: int, log=print, budget_s: float | None = None) -> list[dict]:
    e = make_env(model, x, t)
    fl = floors(e)
    rows = []
    floor_t = interleaved(fl, runs)
    floor_med = {k: v.median for k, v in floor_t.items()}
    rows.append({"kind": "floor", "model": model.name, "batch": x.shape[0], **{k: floor_med[k] for k in fl}})
    log(
        f"  floor  fwd {floor_med['fwd'] * 1000:.1f} ms  fwd+bwd {floor_med['fwd_bwd'] * 1000:.1f} ms  "
        f"to {e.layer} {floor_med['to_layer'] * 1000:.1f} ms"
    )
    from workers.explain import applicability

    usable = applicability(model)
    for c in selected:
        row: dict[str, Any] = {
            "kind": "method",
            "model": model.name,
            "batch": x.shape[0],
            "method": c.method,
            "label": c.label,
            "params": c.params,
            "reference": c.ref_name,
            "floor_kind": c.floor,
        }
        if usable.get(c.method):
            row["error"] = f"not applicable: {usable[c.method]}"
            rows.append(row)
            log(f"  {c.label:42s} n/a ({usable[c.method][:80]})")
            continue
        try:
            fns = {"ours": (lambda c=c: attribute(model, x, t, c.method, c.params))}
            if c.ref is not None:
                try:  # a reference that cannot run on this model is reported, ours is still timed
                    ref = c.ref(e)
                    ref()
                    fns["ref"] = ref
                except Exception as ex:
                    row["ref_error"] = f"{type(ex).__name__}: {str(ex)[:160]}"
                    log(f"  {c.label:42s} reference failed: {row['ref_error']}")
            fns["floor"] = fl[c.floor]
            tm = interleaved(fns, runs, budget_s=budget_s)
            row["ours"] = tm["ours"].median
            row["ref"] = tm["ref"].median if "ref" in tm else None
            row["floor"] = tm["floor"].median
            row["runs"] = len(tm["ours"].runs)
            row["ratio"] = row["ours"] / row["ref"] if row["ref"] else None
            row["x_floor"] = row["ours"] / row["floor"]
            row["ref_x_floor"] = row["ref"] / row["floor"] if row["ref"] else None
        except Exception as ex:  # a method that does not run on this model is a result too
            row["error"] = f"{type(ex).__name__}: {str(ex)[:200]}"
            log(traceback.format_exc(limit=2))
        rows.append(row)
        if "error" in row:
            log(f"  {c.label:42s} ERROR {row['error']}")
        else:
            ref = (
                f"{c.ref_name} {row['ref'] * 1000:.1f} ms  ours/ref {row['ratio']:.2f}"
                if row["ref"]
                else "no reference"
            )
            log(f"  {c.label:42s} ours {row['ours'] * 1000:.1f} ms  x{c.floor} {row['x_floor']:.2f}  {ref}")
    return rows


def run_multi(model, x, t, runs: int, log=print) -> list[dict]:
    """The six-method request: fused against our six separate calls and against the sum of
    the reference calls (Captum for the five it implements, our FEM for FEM: no reference has it)."""
    from workers.explain.fused import fused_attribute

    e = make_env(model, x, t)
    refs = {
        "saliency": _captum("Saliency", abs=False)(e),
        "deconvnet": _captum("Deconvolution")(e),
        "guided_backprop": _captum("GuidedBackprop")(e),
        "gradcam": _gradcam(e),
        "guided_gradcam": _captum("GuidedGradCam", layer=True, interpolate_mode="bilinear")(e),
        "fem": lambda: attribute(model, x, t, "fem"),
    }

    def separate_ref():
        for f in refs.values():
            f()

    def separate_ours():
        for m in SIX:
            attribute(model, x, t, m)

    def fused():
        fused_attribute(model, x, t, [(m, None) for m in SIX])

    fl = floors(e)
    tm = interleaved(
        {"fused": fused, "separate_ours": separate_ours, "separate_ref": separate_ref, "fwd_bwd": fl["fwd_bwd"]}, runs
    )
    row = {"kind": "multi", "model": model.name, "batch": x.shape[0], **{k: v.median for k, v in tm.items()}}
    row["ratio_ref"] = row["fused"] / row["separate_ref"]
    row["ratio_ours"] = row["fused"] / row["separate_ours"]
    row["x_floor"] = row["fused"] / row["fwd_bwd"]
    log(
        f"  six methods: fused {row['fused'] * 1000:.1f} ms, ours separate {row['separate_ours'] * 1000:.1f} ms, "
        f"references {row['separate_ref'] * 1000:.1f} ms -> fused/references {row['ratio_ref']:.2f}, "
        f"x fwd+bwd {row['x_floor']:.2f}"
    )
    return [row]
