"""The evaluate and compare jobs of the worker (POST /v1/evaluate, POST /v1/compare): decode the
request's images and ground truth, call workers.evaluation with the target the gateway resolved
(``job.target_index``; None: the predicted class), shape the answer."""

from __future__ import annotations

import base64
import time

import numpy as np

from common.images import decode_image, grey_levels
from schemas.api import CompareResponse, EvaluateResponse, EvaluateTimings, MapIn
from schemas.problems import ValidationProblem
from schemas.queue import CompareJob, EvaluateJob
from workers.evaluation import compare, compare_methods, evaluate, ground_truth_mask
from workers.explain.base import Progress
from workers.models.loading import LoadedModel
from workers.serving.pipeline import Limits


def _timings(t0: float) -> EvaluateTimings:
    return EvaluateTimings(compute_ms=round((time.perf_counter() - t0) * 1000, 3))


def run_evaluate(model: LoadedModel, job: EvaluateJob, limits: Limits, progress: Progress) -> EvaluateResponse:
    t0 = time.perf_counter()
    req = job.request
    images = [decode_image(b, limits.max_image_pixels) for b in req.images]
    x = model.preprocess(images)
    masks = None
    if req.ground_truth is not None:
        gts = req.ground_truth if isinstance(req.ground_truth, list) else [req.ground_truth] * len(images)
        try:
            masks = np.stack([ground_truth_mask(g, img.size, model.input_size) for g, img in zip(gts, images)])
        except ValueError as e:
            raise ValidationProblem(str(e), field="ground_truth") from e
    results = evaluate(
        model,
        x,
        target=job.target_index,
        methods=req.methods,
        metrics=req.metrics,
        gt_mask=masks,
        progress=progress,
        per_sample=req.per_sample,
        max_image_pixels=limits.max_image_pixels,
        memory_bytes=limits.job_memory_bytes,
    )
    return EvaluateResponse(id=job.id, model=model.name, images=len(images), results=results, timings=_timings(t0))


def _map(m: MapIn, max_pixels: int) -> np.ndarray:
    if m.array is not None:
        try:
            data = base64.b64decode(m.array.data, validate=True)
        except ValueError as e:  # binascii.Error is a ValueError
            raise ValidationProblem("array data is not valid base64", field="map") from e
        shape = m.array.shape
        if len(data) != 4 * shape[0] * shape[1]:
            raise ValidationProblem(f"array data has {len(data)} bytes for shape {shape}", field="map")
        return np.frombuffer(data, dtype="<f4").reshape(shape).astype(np.float64)
    assert m.mask_png is not None  # MapIn holds exactly one of the two
    img = decode_image(m.mask_png, max_pixels)
    return grey_levels(img) / 255.0


def run_compare(model: LoadedModel, job: CompareJob, limits: Limits, progress: Progress) -> CompareResponse:
    t0 = time.perf_counter()
    req = job.request
    max_pixels = limits.max_image_pixels
    if req.map_a is not None and req.map_b is not None:
        a, b = _map(req.map_a, max_pixels), _map(req.map_b, max_pixels)
        if a.shape != b.shape:
            raise ValidationProblem(f"maps of different shapes {a.shape} and {b.shape}", field="map_b")
        values = compare(a, b, req.metrics)
        progress(1.0)
        return CompareResponse(id=job.id, metrics=values, timings=_timings(t0))
    assert req.image is not None and req.methods is not None  # CompareRequest: maps, or image and two methods
    x = model.preprocess([decode_image(req.image, max_pixels)])
    ma, mb = req.methods
    values = compare_methods(
        model,
        x,
        ma,
        mb,
        target=job.target_index,
        metrics=req.metrics,
        max_image_pixels=max_pixels,
        memory_bytes=limits.job_memory_bytes,
    )
    progress(1.0)
    return CompareResponse(
        id=job.id, model=model.name, methods=[ma.name, mb.name], metrics=values, timings=_timings(t0)
    )


def run_job(
    model: LoadedModel, job: EvaluateJob | CompareJob, limits: Limits, progress: Progress
) -> EvaluateResponse | CompareResponse:
    """An evaluate or compare job, by its kind, under the worker's ``limits``."""
    if isinstance(job, EvaluateJob):
        return run_evaluate(model, job, limits, progress)
    return run_compare(model, job, limits, progress)
