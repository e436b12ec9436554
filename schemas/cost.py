"""What a request will cost, estimated at the door before it is queued (docs/robustness.md).

Compute is counted in **forward passes at the model's input size**: a backward pass counts as two
forwards, so one gradient (forward + backward) is 3. Each method's count follows from its validated
params (``MethodCall.parsed``) and the model's input size (occlusion's windows); the image itself is
resized to that input, so its size enters the result estimate, not the compute. Evaluate requests
add each metric's model passes per image and method; map-vs-map compare runs no model.

The result is counted in bytes as stored in Redis: an ``array`` output is base64 float32 (16/3 bytes a
pixel of the client's image), a PNG is bounded by its raw size (3 bytes a pixel for RGB, 1 for the
mask) plus a filter byte per row, in base64."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from schemas.methods import Params
from schemas.methods.linearization import IntegratedGradientsParams, SmoothGradParams
from schemas.methods.perturbation import AdversarialParams, LimeParams, MeaningfulParams, OcclusionParams
from schemas.methods.structure import DeepLiftParams

GRADIENT = 3.0  # one forward and one backward (a backward ~ 2 forwards)
Size = tuple[int, int]  # (height, width) of the model's input


def _ig(p: IntegratedGradientsParams, size: Size) -> float:
    nodes = p.steps + 1 if p.integration == "riemann_trapezoid" else p.steps
    return nodes * GRADIENT + 2  # + the scores of x and of the baseline


def _smoothgrad(p: SmoothGradParams, size: Size) -> float:
    return p.samples * method_cost(p.base, p.base_model(), size)


def occlusion_windows(p: OcclusionParams, size: Size) -> int:
    """Window positions over the model's input (``workers.explain.occlusion.positions``)."""
    h, w = size
    rows = math.ceil((h - min(p.window, h)) / p.stride) + 1
    cols = math.ceil((w - min(p.window, w)) / p.stride) + 1
    return rows * cols


def _occlusion(p: OcclusionParams, size: Size) -> float:
    return occlusion_windows(p, size) + 1.0


def _lime(p: LimeParams, size: Size) -> float:
    return p.samples + 1.0


def _meaningful(p: MeaningfulParams, size: Size) -> float:
    return p.iterations * GRADIENT + 2


def _adversarial(p: AdversarialParams, size: Size) -> float:
    if p.attack == "fgsm":
        return GRADIENT + 1
    if p.attack == "pgd":
        return p.steps * GRADIENT + 1
    if p.attack == "deepfool":  # per step: a forward and a backward per candidate class
        return p.max_iter * (1 + 2 * p.candidates) + 1
    return (p.iterations + 1) * p.population + 1.0  # one_pixel: a forward per candidate per generation


def _deeplift(p: DeepLiftParams, size: Size) -> float:
    rows = 2 if p.rule == "rescale" else 4  # [x; x0] or [x; x0; D+; D-] through the net
    return rows * GRADIENT * (2 if p.precision == "float64" else 1)


Estimator = Callable[[Any, Size], float]
ESTIMATORS: dict[str, Estimator] = {
    "integrated_gradients": _ig,
    "smoothgrad": _smoothgrad,
    "occlusion": _occlusion,
    "lime": _lime,
    "meaningful_perturbation": _meaningful,
    "adversarial": _adversarial,
    "deeplift": _deeplift,
}
# methods with a fixed count: a forward and one (modified) backward, two for guided Grad-CAM, a
# forward alone for the activation maps, the two generators and the model for Charachon et al.
FIXED = {"gradcam": GRADIENT, "guided_gradcam": 5.0, "cam": 1.0, "fem": 1.0, "adversarial_generators": 3.0}


def method_cost(name: str, params: Params, size: Size) -> float:
    """Forward passes of one call on one image; the ``smoothgrad`` modifier multiplies by its samples."""
    est = ESTIMATORS.get(name)
    cost = est(params, size) if est is not None else FIXED.get(name, GRADIENT)
    sg = getattr(params, "smoothgrad", None)
    return cost * sg.samples if sg is not None else cost


def metric_cost(name: str, params: dict[str, Any], method: float) -> float:
    """Model passes of one metric for one image and one method whose map costs ``method``."""
    if name in ("deletion_auc", "insertion_auc"):
        return float(params.get("steps", 32)) + 1
    if name == "faithfulness_correlation":
        return float(params.get("runs", 100)) + 1
    if name == "robustness_fgsm":
        return GRADIENT + 1 + method
    if name == "robustness_deepfool":
        return float(params.get("max_iter", 50)) * (1 + 2 * float(params.get("candidates", 10))) + 1 + method
    if name == "max_sensitivity":
        return float(params.get("samples", 10)) * method
    if name == "model_randomisation":  # one map per randomised layer (default all: counted as 50)
        return float(params.get("layers") or 50) * method
    if name == "time_ms":
        return method
    return 0.0  # computed from the maps alone


@dataclass(frozen=True)
class Estimate:
    """A request's estimated compute (forward passes) and the method that costs most."""

    cost: float
    dominant: str
    dominant_cost: float


def estimate(calls: Sequence[tuple[str, Params]], size: Size, images: int = 1, metrics: Sequence[Any] = ()) -> Estimate:
    """``images`` x the sum over the calls of the call's cost plus its metrics' (``MetricCall``s)."""
    costs: list[tuple[str, float]] = []
    for name, params in calls:
        c = method_cost(name, params, size)
        c += sum(metric_cost(m.name, m.params, c) for m in metrics)
        costs.append((name, c * images))
    dominant, top = max(costs, key=lambda nc: nc[1], default=("", 0.0))
    return Estimate(sum(c for _, c in costs), dominant, top)


# ---- the stored result -------------------------------------------------------------------------
def b64_len(raw: int) -> int:
    return 4 * math.ceil(raw / 3)


def output_bytes(output: str, width: int, height: int) -> int:
    """Upper bound of one output of one map for an image of ``width`` x ``height`` pixels."""
    if output == "array":
        return b64_len(4 * width * height)
    channels = 1 if output == "mask_png" else 3
    return b64_len((channels * width + 1) * height) + 1024  # a filter byte per row; headers, zlib blocks


def result_bytes(width: int, height: int, methods: int, outputs: Sequence[str], images: int = 1) -> int:
    """Upper bound of the maps of a request's result: images x methods x outputs."""
    return images * methods * sum(output_bytes(o, width, height) for o in outputs)
