"""The two verbs behind ``/v1/evaluate`` and ``/v1/compare`` (and the benchmark command).

    from workers.evaluation import evaluate, compare
    res = evaluate(model, x, None, ["gradcam", "fem"], ["pointing_game", "deletion_auc"], gt_mask=masks)
    res["gradcam"]["pointing_game"]   # mean over the images (None if undefined)
    compare(map_a, map_b)             # {"cc": ..., "sim": ..., ...}

``x`` is the normalised batch at the model's input size (``model.preprocess``), ``gt_mask`` a
boolean (H, W) or (N, H, W) array at that size (:func:`ground_truth_mask` builds it from a box,
polygon or PNG given in the client's image pixels). Metric names and parameters are those of
``schemas.metrics.METRICS``.
"""

from __future__ import annotations

import base64
import io
import json
import math
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

import workers.evaluation.faithfulness as faithfulness
import workers.evaluation.metrics as M
import workers.evaluation.robustness as robustness
import workers.evaluation.sanity as sanity
from schemas.metrics import COMPARE_METRICS, METRICS, parse_metric_params
from workers.errors import MethodError
from workers.evaluation.common import map_fn, predict, reduce_map, to_numpy
from workers.explain import attribute
from workers.explain.base import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MEMORY_BYTES, NO_PROGRESS, Progress
from workers.models.loading import LoadedModel

Call = str | dict[str, Any]


def _calls(items: Iterable[Call]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for c in items:
        if isinstance(c, str):
            out.append((c, {}))
        elif hasattr(c, "name"):  # pydantic MethodCall / MetricCall
            out.append((c.name, dict(getattr(c, "params", None) or {})))
        else:
            out.append((c["name"], dict(c.get("params") or {})))
    return out


def _labels(calls: list[tuple[str, dict]]) -> list[str]:
    """A method's result key: its name, or name(params) when the same method is asked twice."""
    names = [n for n, _ in calls]
    return [n if names.count(n) == 1 else f"{n}({json.dumps(p, sort_keys=True)})" for n, p in calls]


def _targets(model: LoadedModel, x: torch.Tensor, target) -> torch.Tensor:
    n = x.shape[0]
    if target is None or (isinstance(target, str) and target == "predicted"):
        return predict(model, x)
    if isinstance(target, int):
        return torch.full((n,), target, dtype=torch.long)
    t = torch.as_tensor(target, dtype=torch.long).reshape(-1)
    return t.expand(n).clone() if t.numel() == 1 else t


def _gt(gt_mask, n: int, hw: tuple[int, int]) -> np.ndarray | None:
    if gt_mask is None:
        return None
    g = np.asarray(gt_mask.cpu() if isinstance(gt_mask, torch.Tensor) else gt_mask).astype(bool)
    if g.ndim == 2:
        g = np.broadcast_to(g, (n,) + g.shape)
    if g.shape != (n,) + tuple(hw):
        raise ValueError(f"ground truth of shape {g.shape}; expected {(n,) + tuple(hw)} (the model's input size)")
    return g


def _pos(a: np.ndarray) -> np.ndarray:
    return np.clip(a, 0, None)


def sample_metric(name: str, params: dict, m: np.ndarray, gt: np.ndarray | None) -> float:
    """A metric that needs only one map (H, W) and perhaps its ground truth."""
    if name in COMPARE_METRICS:
        return M.compare_maps(m, gt.astype(np.float64), name, params)
    if name == "pointing_game":
        return M.pointing_game(m, gt, params.get("tolerance", 0))
    if name == "relevance_mass_accuracy":
        return M.relevance_mass_accuracy(_pos(m), gt)
    if name == "relevance_rank_accuracy":
        return M.relevance_rank_accuracy(m, gt)
    if name == "iou_gt":
        return M.iou_gt(m, gt, params.get("threshold", 0.5))
    if name == "sparseness":
        return M.sparseness(m)
    raise KeyError(name)


def _deletion_insertion(name, p, model, x, targets, maps, fn, progress) -> list:
    n = x.shape[0]
    kw = {k: p[k] for k in ("fill", "value", "sigma", "steps", "score", "batch_size")}
    return [
        faithfulness.deletion_insertion(
            model,
            x[i : i + 1],
            int(targets[i]),
            maps[i],
            mode=name.split("_")[0],
            progress=progress.sub(i / n, (i + 1) / n),
            **kw,
        )[0]
        for i in range(n)
    ]


def _faithfulness_correlation(name, p, model, x, targets, maps, fn, progress) -> list:
    subset = min(p["subset_size"], x[0].numel())
    kw = {k: p[k] for k in ("runs", "value", "seed", "batch_size")}
    return list(
        faithfulness.faithfulness_correlation(model, x, targets, maps, subset_size=subset, progress=progress, **kw)
    )


def _robustness(name, p, model, x, targets, maps, fn, progress) -> list:
    kw = {k: v for k, v in p.items() if k != "quantile"}
    return robustness.adversarial_robustness(
        model, x, targets, fn, maps, name.split("_")[1], p["quantile"], progress=progress, **kw
    )


def _max_sensitivity(name, p, model, x, targets, maps, fn, progress) -> list:
    return list(
        robustness.max_sensitivity(model, x, targets, fn, maps, p["radius"], p["samples"], p["seed"], progress=progress)
    )


def _randomisation(name, p, model, x, targets, maps, fn, progress) -> list:
    return sanity.model_randomisation(model, x, targets, fn, maps, p["layers"], p["seed"], progress=progress)


# the metrics that run the model: (name, params, model, x, targets, maps, map function, progress) -> per-image values
MODEL_METRICS = {
    "deletion_auc": _deletion_insertion,
    "insertion_auc": _deletion_insertion,
    "faithfulness_correlation": _faithfulness_correlation,
    "robustness_fgsm": _robustness,
    "robustness_deepfool": _robustness,
    "max_sensitivity": _max_sensitivity,
    "model_randomisation": _randomisation,
}


def evaluate_method(
    model: LoadedModel,
    x: torch.Tensor,
    targets: torch.Tensor,
    method: str,
    method_params: dict,
    metrics: list[tuple[str, dict]],
    gt: np.ndarray | None = None,
    progress: Progress = NO_PROGRESS,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
) -> tuple[dict[str, list], torch.Tensor]:
    """Per-sample values {metric: [value per image]} of one method, and its maps (N, H, W).
    ``max_image_pixels``, ``memory_bytes``: the bounds of ``attribute``."""
    n = x.shape[0]
    fn = map_fn(method, method_params, max_image_pixels, memory_bytes)
    n_model = sum(1 for k, _ in metrics if METRICS[k].needs_model)
    share = 1.0 / (1 + n_model)
    t0 = time.perf_counter()
    att = attribute(
        model,
        x,
        targets,
        method,
        method_params,
        progress=progress.sub(0, share),
        max_image_pixels=max_image_pixels,
        memory_bytes=memory_bytes,
    )
    elapsed_ms = (time.perf_counter() - t0) * 1000 / n
    maps = reduce_map(method, att.maps, method_params)
    mnp = to_numpy(maps)
    out: dict[str, list] = {}
    done = 0
    for name, params in metrics:
        spec = METRICS[name]
        if spec.needs_ground_truth and gt is None:
            raise ValueError(f"{name} needs a ground truth mask")
        p = parse_metric_params(name, params).model_dump()
        if name == "time_ms":
            out[name] = [elapsed_ms] * n
        elif not spec.needs_model:
            out[name] = [sample_metric(name, p, mnp[i], None if gt is None else gt[i]) for i in range(n)]
        else:
            sub = progress.sub(share * (1 + done), share * (2 + done))
            done += 1
            out[name] = MODEL_METRICS[name](name, p, model, x, targets, maps, fn, sub)
    progress(1.0)
    return out, maps


def _clean(v):
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return float(v)


def aggregate(values: list) -> Any:
    """Mean over images ignoring NaN (None if none is defined); dict values per output."""
    if values and isinstance(values[0], dict):
        return {k: aggregate([v[k] for v in values]) for k in values[0]}
    arr = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else None


def evaluate(
    model: LoadedModel,
    x: torch.Tensor,
    target=None,
    methods: Iterable[Call] = ("gradcam",),
    metrics: Iterable[Call] = ("pointing_game",),
    gt_mask=None,
    progress: Progress = NO_PROGRESS,
    per_sample: bool = False,
    on_error: str = "raise",
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
) -> dict[str, dict[str, Any]]:
    """{method: {metric: value}} for the batch ``x`` (N, C, H, W), normalised at the model's input size.

    ``target``: None / "predicted" (arg max per image), a class index, or one index per image.
    ``methods`` / ``metrics``: names or ``{"name", "params"}``. ``gt_mask``: bool (H, W) or (N, H, W).
    A value is the mean over the images of a float (None when undefined), or ``{output: mean}`` for
    multi-output metrics; ``per_sample=True`` gives the list of per-image values instead.
    ``on_error="skip"`` records a method that cannot run as ``{"error": message}`` instead of raising.
    ``max_image_pixels``, ``memory_bytes``: the bounds of ``attribute`` (the worker passes its settings)."""
    mcalls = _calls(methods)
    kcalls = _calls(metrics)
    for k, _ in kcalls:
        if k not in METRICS:
            raise KeyError(f"unknown metric {k!r}")
    targets = _targets(model, x, target)
    gt = _gt(gt_mask, x.shape[0], tuple(x.shape[-2:]))
    result: dict[str, dict[str, Any]] = {}
    for j, ((name, params), label) in enumerate(zip(mcalls, _labels(mcalls))):
        sub = progress.sub(j / len(mcalls), (j + 1) / len(mcalls))
        try:
            vals, _ = evaluate_method(model, x, targets, name, params, kcalls, gt, sub, max_image_pixels, memory_bytes)
        except MethodError as e:
            if on_error != "skip":
                raise
            result[label] = {"error": str(getattr(e, "detail", None) or e)}
            continue
        result[label] = {
            k: ([_clean(v) for v in vs] if per_sample else _clean(aggregate(vs))) for k, vs in vals.items()
        }
    return result


def compare(map_a, map_b, metrics: Iterable[Call] | None = None) -> dict[str, float | None]:
    """The map-vs-map metrics of two maps (H, W) (torch or numpy; a leading 1-sized axis is dropped);
    ``map_b`` is the reference. Both are read by ``metrics.saliency_form`` (signed maps by magnitude)."""
    a = to_numpy(map_a) if isinstance(map_a, torch.Tensor) else np.asarray(map_a, dtype=np.float64)
    b = to_numpy(map_b) if isinstance(map_b, torch.Tensor) else np.asarray(map_b, dtype=np.float64)
    a, b = np.squeeze(a), np.squeeze(b)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"two 2-D maps of the same shape expected, got {a.shape} and {b.shape}")
    out = {}
    for name, params in _calls(metrics if metrics is not None else COMPARE_METRICS):
        if name not in COMPARE_METRICS:
            raise KeyError(f"{name!r} is not a map-vs-map metric")
        p = parse_metric_params(name, params).model_dump()
        out[name] = _clean(M.compare_maps(a, b, name, p))
    return out


def compare_methods(
    model: LoadedModel,
    x: torch.Tensor,
    method_a: Call,
    method_b: Call,
    target=None,
    metrics: Iterable[Call] | None = None,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
) -> dict[str, float | None]:
    """Two methods on one image (1, C, H, W): their maps compared (``method_b``'s map is the reference)."""
    t = _targets(model, x[:1], target)
    maps = []
    for call in (method_a, method_b):
        ((name, params),) = _calls([call])
        att = attribute(model, x[:1], t, name, params, max_image_pixels=max_image_pixels, memory_bytes=memory_bytes)
        maps.append(reduce_map(name, att.maps, params)[0])
    return compare(maps[0], maps[1], metrics)


def ground_truth_mask(gt, image_size: tuple[int, int], model_size: tuple[int, int]) -> np.ndarray:
    """A boolean mask at the model's input size (H, W) from a ground truth given in the client's image
    pixels (``image_size`` = (width, height), as PIL): a ``schemas.metrics.GroundTruth`` or a dict with
    one of ``box`` [x0, y0, x1, y1], ``polygon`` [[x, y], ...], ``mask_png`` (base64), or an array / PIL
    image. The mask is drawn at the image size and resized with nearest-neighbour sampling."""
    w, h = image_size
    if hasattr(gt, "model_dump"):
        gt = gt.model_dump(exclude_none=True)
    if isinstance(gt, dict) and "box" in gt:
        img = Image.new("L", (w, h), 0)
        x0, y0, x1, y1 = gt["box"]
        ImageDraw.Draw(img).rectangle([x0, y0, x1 - 1, y1 - 1], fill=255)
    elif isinstance(gt, dict) and "polygon" in gt:
        img = Image.new("L", (w, h), 0)
        ImageDraw.Draw(img).polygon([tuple(map(float, p)) for p in gt["polygon"]], fill=255)
    elif isinstance(gt, dict) and "mask_png" in gt:
        img = Image.open(io.BytesIO(base64.b64decode(gt["mask_png"]))).convert("L")
        if img.size != (w, h):
            raise ValueError(f"mask of size {img.size}, image of size {(w, h)}")
    elif isinstance(gt, Image.Image):
        img = gt.convert("L")
    else:
        img = Image.fromarray((np.asarray(gt) > 0).astype(np.uint8) * 255)
    mh, mw = model_size
    if img.size != (mw, mh):
        img = img.resize((mw, mh), Image.NEAREST)
    return np.asarray(img) > 0


# the catalog names this module computes (a test checks it equals schemas.metrics.METRICS)
IMPLEMENTED_METRICS = (
    frozenset(COMPARE_METRICS)
    | {"pointing_game", "relevance_mass_accuracy", "relevance_rank_accuracy", "iou_gt", "sparseness", "time_ms"}
    | frozenset(MODEL_METRICS)
)
