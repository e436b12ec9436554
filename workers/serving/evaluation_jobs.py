"""The evaluate and compare jobs of the worker (POST /v1/evaluate, POST /v1/compare):
decode the request's images and ground truth, call workers.evaluation, shape the answer."""

from __future__ import annotations

import base64
import time

import numpy as np

from common.images import decode_image
from schemas.problems import ValidationProblem
from workers.explain.base import Progress
from workers.models.loading import LoadedModel


def run_evaluate(model: LoadedModel, req: dict, max_pixels: int, progress: Progress) -> dict:
    from workers.evaluation import evaluate, ground_truth_mask

    t0 = time.perf_counter()
    images = [decode_image(b, max_pixels) for b in req["images"]]
    x = model.preprocess(images)
    gt = req.get("ground_truth")
    masks = None
    if gt is not None:
        gts = [
            {k: v for k, v in g.items() if v is not None}  # exactly one of box / polygon / mask_png
            for g in (gt if isinstance(gt, list) else [gt] * len(images))
        ]
        try:
            masks = np.stack([ground_truth_mask(g, img.size, model.input_size) for g, img in zip(gts, images)])
        except ValueError as e:
            raise ValidationProblem(str(e), field="ground_truth")
    target = req.get("target", "predicted")
    if isinstance(target, str) and target != "predicted":
        target = int(target) if target.isdigit() else model.labels.index(target)
    results = evaluate(
        model,
        x,
        target=target,
        methods=req["methods"],
        metrics=req["metrics"],
        gt_mask=masks,
        progress=progress,
        per_sample=req.get("per_sample", False),
    )
    ms = (time.perf_counter() - t0) * 1000
    return {"model": model.name, "images": len(images), "results": results, "timings": {"compute_ms": round(ms, 3)}}


def _map(m: dict, max_pixels: int) -> np.ndarray:
    if m.get("array") is not None:
        a = m["array"]
        data = base64.b64decode(a["data"])
        shape = a["shape"]
        if len(data) != 4 * shape[0] * shape[1]:
            raise ValidationProblem(f"array data has {len(data)} bytes for shape {shape}", field="map")
        return np.frombuffer(data, dtype="<f4").reshape(shape).astype(np.float64)
    img = decode_image(m["mask_png"], max_pixels)
    return np.asarray(img.convert("L"), dtype=np.float64) / 255.0


def run_compare(model: LoadedModel, req: dict, max_pixels: int, progress: Progress) -> dict:
    from workers.evaluation import compare, compare_methods

    t0 = time.perf_counter()
    metrics = req.get("metrics")
    if req.get("map_a") is not None:
        a, b = _map(req["map_a"], max_pixels), _map(req["map_b"], max_pixels)
        if a.shape != b.shape:
            raise ValidationProblem(f"maps of different shapes {a.shape} and {b.shape}", field="map_b")
        values = compare(a, b, metrics)
        out = {"metrics": values}
    else:
        img = decode_image(req["image"], max_pixels)
        x = model.preprocess([img])
        target = req.get("target", "predicted")
        if isinstance(target, str) and target != "predicted":
            target = int(target) if target.isdigit() else model.labels.index(target)
        a, b = req["methods"]
        values = compare_methods(model, x, a, b, target=target, metrics=metrics)
        out = {"model": model.name, "methods": [a["name"], b["name"]], "metrics": values}
    progress(1.0)
    out["timings"] = {"compute_ms": round((time.perf_counter() - t0) * 1000, 3)}
    return out


RUNNERS = {"evaluate": run_evaluate, "compare": run_compare}
