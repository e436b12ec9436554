"""A batch of explain requests on one model, end to end: preprocess, predict, take each item's
target, run each distinct method call once over the samples that asked for it, post-process and
render. The worker (``workers.serving.execute``) and the CLI both call :func:`run_batch`; the
requests are validated ``ExplainRequest`` models and every default is read from them
(docs/architecture.md, "The path of one request").

One bad item fails only itself: a batch of several that raises unexpectedly (preprocessing, a
forward, a fused pass, an ``attribute()`` group, rendering) is run again item by item, so the item
that raises alone gets the problem and the others get their results alone (docs/robustness.md)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from schemas import display
from schemas.api import (
    ClassScore,
    ExplainRequest,
    ExplainResponse,
    Explanation,
    ImageInfo,
    MethodCall,
    Prediction,
    TargetOut,
    Timings,
)
from schemas.methods import default_reduce, map_is_signed
from schemas.problems import WorkerFailure
from schemas.settings import Settings
from workers.errors import ExplainError
from workers.explain import attribute
from workers.explain.base import DEFAULT_MAX_IMAGE_PIXELS, NO_PROGRESS, Progress
from workers.explain.fused import FusedCall, FusedPass, call_key, plan_call
from workers.explain.postprocess import display_map, kept, normalize, reduce_channels, resize
from workers.models.loading import LoadedModel
from workers.serving import render
from workers.serving.outcome import REDIS_DOWN
from workers.serving.targets import check_index

log = logging.getLogger("whitebox.worker")


def internal_error(e: BaseException) -> WorkerFailure:
    """A bug fails its job, not the worker. The answer names the exception's type only (its text may
    carry file paths or heap addresses); the traceback goes to the log."""
    log.error("job failed with %s", type(e).__name__, exc_info=e)
    return WorkerFailure(f"internal error ({type(e).__name__}) while computing this job; the worker logged it")


@dataclass(frozen=True)
class Limits:
    """The worker's bounds a batch runs under (``schemas.settings``): the largest image a method's
    params may carry, and the memory bound of one job."""

    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    job_memory_bytes: int = Settings.model_fields["job_memory_bytes"].default

    @classmethod
    def of(cls, s: Settings) -> Limits:
        return cls(max_image_pixels=s.max_image_pixels, job_memory_bytes=s.job_memory_bytes)


@dataclass(frozen=True)
class Result:
    """The answer to one request, less what only the worker knows (the job's id and timings)."""

    model: str
    prediction: Prediction
    target: TargetOut
    explanations: list[Explanation]
    image: ImageInfo | None = None

    def response(self, job_id: str, timings: Timings) -> ExplainResponse:
        return ExplainResponse(
            id=job_id,
            model=self.model,
            image=self.image,
            prediction=self.prediction,
            target=self.target,
            explanations=self.explanations,
            timings=timings,
        )


@dataclass
class Item:
    """One request of a batch: the validated request, its decoded image and the class to explain
    (``target_index``, as the gateway resolved it; None: the predicted class). :func:`run_batch`
    fills ``result`` or ``error``."""

    request: ExplainRequest
    image: Image.Image
    target_index: int | None = None
    image_info: ImageInfo | None = None
    progress: Progress = NO_PROGRESS
    result: Result | None = None
    error: ExplainError | None = None
    compute_ms: float = 0.0


def _key(call: MethodCall) -> str:
    return call_key(call.name, call.params)


@dataclass
class _Batch:
    """The state of one run_batch: inputs, predictions, targets, per-item bookkeeping, rendered maps."""

    model: LoadedModel
    items: list[Item]
    limits: Limits
    x: torch.Tensor
    calls: list[dict[str, MethodCall]]  # per item: call key -> call (a call asked twice runs once)
    predict_ms: list[float]
    probs: torch.Tensor
    targets: torch.Tensor
    done_calls: list[int]
    outs: dict[tuple[int, str], Explanation] = field(default_factory=dict)

    @classmethod
    def prepare(cls, model: LoadedModel, items: list[Item], limits: Limits) -> _Batch:
        n = len(items)
        t0 = time.perf_counter()
        x = model.preprocess([it.image for it in items])
        calls = [{_key(c): c for c in it.request.methods} for it in items]
        prep_ms = (time.perf_counter() - t0) * 1000 / max(n, 1)
        probs = torch.zeros(n, model.num_classes)
        targets = torch.zeros(n, dtype=torch.long)
        return cls(model, items, limits, x, calls, [prep_ms] * n, probs, targets, [0] * n)

    def n_calls(self, i: int) -> int:
        return len(self.items[i].request.methods)

    def ok(self, i: int) -> bool:
        return self.items[i].error is None


def run_batch(model: LoadedModel, items: list[Item], fuse: bool = True, limits: Limits | None = None) -> None:
    """Fill ``item.result`` or ``item.error`` for every item (never raises for one bad item; only
    Redis being unreachable, which is no job's fault, propagates).

    Items whose requests share the same set of fusable calls (``workers.explain.fused``)
    go through one fused pass: one forward gives the predictions and every fusable map,
    with one backward per distinct backward rule. The other calls run once per distinct
    call (same name and params) over the sub-batch of samples that asked for it.
    ``fuse=False`` runs every call through ``attribute()`` (the reference path). ``limits``: the
    worker's bounds (its settings; the defaults of ``schemas.settings`` when not given).

    A problem of one item (its target, its cancellation) or of one call (a method the model cannot
    run) fails the items it concerns. Any other exception, anywhere in a batch of several, runs the
    batch again item by item: the item that raises alone fails (500), and every other item's result
    is exactly its result alone."""
    limits = limits or Limits()
    try:
        _run(model, items, fuse, limits)
    except REDIS_DOWN:
        raise
    except Exception as e:
        if len(items) == 1:
            items[0].result, items[0].error = None, e if isinstance(e, ExplainError) else internal_error(e)
            return
        log.warning("a batch of %d raised %s; running its items one by one", len(items), type(e).__name__)
        for it in items:
            it.result, it.error, it.compute_ms = None, None, 0.0
            run_batch(model, [it], fuse, limits)


def _run(model: LoadedModel, items: list[Item], fuse: bool, limits: Limits) -> None:
    b = _Batch.prepare(model, items, limits)
    plans, fused_keys = _plan(b, fuse)
    for sig, idx in _fused_groups(fused_keys).items():
        _run_fused(b, sig, [plans[k] for k in sig], idx)
    rest = [i for i, sig in enumerate(fused_keys) if not sig]
    if rest:
        _predict(b, rest)
    for key, (call, idx) in _attribute_groups(b, fused_keys).items():
        _run_attribute(b, key, call, idx)
    for i in range(len(items)):
        if b.ok(i):
            _assemble(b, i)


# ---- progress ---------------------------------------------------------------------------


def _group_progress(b: _Batch, idx: list[int], span: int) -> Progress:
    """The progress of a step over the items ``idx`` that advances each by ``span`` of its calls: the
    item's own progress for one item; for several, a report to each, where a cancellation fails that
    item alone (anything else its progress raises propagates)."""
    subs = [
        (i, b.items[i].progress.sub(b.done_calls[i] / b.n_calls(i), (b.done_calls[i] + span) / b.n_calls(i)))
        for i in idx
    ]
    if len(subs) == 1:
        return subs[0][1]

    def report(fraction: float) -> None:
        for i, p in subs:
            if b.ok(i):
                try:
                    p(fraction)
                except ExplainError as e:
                    b.items[i].error = e

    return Progress(report)


def _report(it: Item, fraction: float) -> None:
    """Progress of one item; a cancellation fails that item only."""
    if it.error is None:
        try:
            it.progress(fraction)
        except ExplainError as e:
            it.error = e


# ---- steps ------------------------------------------------------------------------------


def _plan(b: _Batch, fuse: bool) -> tuple[dict[str, Any], list[tuple[str, ...]]]:
    """The fused plan of every distinct call (None: not fusable) and each item's fused signature."""
    plans: dict[str, FusedCall | None] = {}
    signatures: list[tuple[str, ...]] = []
    for calls in b.calls:
        keys = []
        if fuse:
            for key, call in calls.items():
                if key not in plans:
                    plans[key] = plan_call(b.model, call.name, call.parsed)
                if plans[key] is not None:
                    keys.append(key)
        signatures.append(tuple(sorted(keys)))
    return plans, signatures


def _fused_groups(signatures: list[tuple[str, ...]]) -> dict[tuple[str, ...], list[int]]:
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, sig in enumerate(signatures):
        if sig:
            groups.setdefault(sig, []).append(i)
    return groups


def _set_predictions(b: _Batch, idx: list[int], probs: torch.Tensor, t_start: float) -> None:
    """Store the softmax of the items ``idx``, take their targets and charge them the forward."""
    b.probs[idx] = probs
    for j, i in enumerate(idx):
        try:
            t = b.items[i].target_index
            b.targets[i] = int(probs[j].argmax()) if t is None else check_index(b.model, t)
        except ExplainError as e:
            b.items[i].error = e
    fwd_ms = (time.perf_counter() - t_start) * 1000 / len(idx)
    for i in idx:
        b.predict_ms[i] += fwd_ms


def _run_fused(b: _Batch, sig: tuple[str, ...], calls: list[FusedCall], idx: list[int]) -> None:
    """One fused pass over the items ``idx``: predictions, then every fusable map of ``sig`` (``calls``:
    the fused plan of each of its calls, whose ``key`` names the pass's attributions)."""
    t1 = time.perf_counter()
    fp = FusedPass(b.model, b.x[idx], calls)
    logits = fp.forward()
    _set_predictions(b, idx, torch.softmax(logits.float(), dim=1), t1)
    live = [j for j, i in enumerate(idx) if b.ok(i)]
    if not live:
        return
    mask = torch.zeros(len(idx), dtype=torch.bool)
    mask[live] = True
    progress = _group_progress(b, [idx[j] for j in live], len(sig))
    t1 = time.perf_counter()
    try:
        atts = fp.explain(b.targets[idx], mask, progress=progress)
    except ExplainError as e:
        for i in idx:
            b.items[i].error = b.items[i].error or e
        return
    del fp
    ms = (time.perf_counter() - t1) * 1000 / (len(live) * len(sig))
    for j in live:
        i = idx[j]
        if not b.ok(i):  # cancelled during the pass
            continue
        for key, plan in zip(sig, calls, strict=True):
            att, call = atts[plan.key], b.calls[i][key]
            params = {**call.params, **att.used_params}
            b.outs[(i, key)] = _render(b.items[i], call, att.maps[j : j + 1], params, {}, ms)
        b.done_calls[i] += len(sig)
        if len(live) > 1:
            _report(b.items[i], b.done_calls[i] / b.n_calls(i))


def _predict(b: _Batch, idx: list[int]) -> None:
    """Predictions of the items no fused pass served."""
    t1 = time.perf_counter()
    with torch.inference_mode():
        p = torch.softmax(b.model.module(b.x[idx]).float(), dim=1)
    _set_predictions(b, idx, p.clone(), t1)


def _attribute_groups(b: _Batch, fused_keys: list[tuple[str, ...]]) -> dict[str, tuple[MethodCall, list[int]]]:
    """Each call no fused pass served, with the live items that asked for it."""
    groups: dict[str, tuple[MethodCall, list[int]]] = {}
    for i, calls in enumerate(b.calls):
        if not b.ok(i):
            continue
        for key, call in calls.items():
            if key not in fused_keys[i]:
                groups.setdefault(key, (call, []))[1].append(i)
    return groups


def _run_attribute(b: _Batch, key: str, call: MethodCall, idx: list[int]) -> None:
    """One attribute() of ``call`` over the items ``idx`` that are still live."""
    idx = [i for i in idx if b.ok(i)]
    if not idx:
        return
    progress = _group_progress(b, idx, 1)
    t1 = time.perf_counter()
    try:
        att = attribute(
            b.model,
            b.x[idx],
            b.targets[idx],
            call.name,
            call.parsed,
            progress=progress,
            max_image_pixels=b.limits.max_image_pixels,
            memory_bytes=b.limits.job_memory_bytes,
        )
    except ExplainError as e:
        for i in idx:
            b.items[i].error = e
        return
    ms = (time.perf_counter() - t1) * 1000 / len(idx)
    params = {**call.params, **att.used_params}
    for j, i in enumerate(idx):
        if not b.ok(i):  # cancelled during the call
            continue
        b.done_calls[i] += 1
        if len(idx) > 1:
            _report(b.items[i], b.done_calls[i] / b.n_calls(i))
        meta = att.meta[j] if att.meta else {}
        b.outs[(i, key)] = _render(b.items[i], call, att.maps[j : j + 1], params, meta, ms)


def _assemble(b: _Batch, i: int) -> None:
    """Item ``i``'s result: its prediction, target and maps in the order of its request."""
    it, model = b.items[i], b.model
    top = torch.topk(b.probs[i], min(it.request.top_k, model.num_classes))
    pred, t = int(top.indices[0]), int(b.targets[i])
    explanations = [b.outs[(i, _key(c))] for c in it.request.methods]
    it.compute_ms = b.predict_ms[i] + sum(e.compute_ms for e in explanations)
    top_k = [ClassScore(class_index=int(c), label=model.labels[int(c)], score=float(s)) for s, c in zip(*top)]
    it.result = Result(
        model=model.name,
        prediction=Prediction(class_index=pred, label=model.labels[pred], score=float(top.values[0]), top_k=top_k),
        target=TargetOut(class_index=t, label=model.labels[t]),
        explanations=explanations,
        image=it.image_info,
    )


# ---- post-processing --------------------------------------------------------------------


def _render(
    it: Item, call: MethodCall, raw: torch.Tensor, params: dict[str, Any], meta: dict, compute_ms: float
) -> Explanation:
    """One map: reduced over channels, resized to the client's image, normalised (signed maps
    ``abs_max``, unsigned ``minmax``, unless the request names one), rendered."""
    req = it.request
    how = req.reduce or default_reduce(call.name, params)
    w, h = it.image.size
    m = resize(reduce_channels(raw.detach().float(), how), (h, w))[0]
    signed = map_is_signed(call.name, params, req.reduce)
    how_norm = req.normalize or (display.SIGNED_NORMALIZE if signed else display.UNSIGNED_NORMALIZE)
    cmap = req.colormap or (display.SIGNED_COLORMAP if signed else display.UNSIGNED_COLORMAP)
    return Explanation(
        method=call.name,
        params=params,
        raw_range=[float(m.min()), float(m.max())],
        signed=signed,
        normalize=how_norm,
        colormap=cmap,
        compute_ms=round(compute_ms, 3),
        metadata=meta,
        **_outputs(m, how_norm, signed, cmap, req, it.image),
    )


def _outputs(
    m: torch.Tensor, how_norm: str, signed: bool, cmap: str, req: ExplainRequest, image: Image.Image
) -> dict[str, Any]:
    """The client formats the request asked for, of the map ``m`` (C, H, W) as reduced and resized."""
    out: dict[str, Any] = {}
    if "array" in req.outputs:
        a = normalize(m, how_norm).cpu().numpy()
        out["array"] = render.array_out(a[0] if a.shape[0] == 1 else a)
    if not any(o != "array" for o in req.outputs):
        return out
    d_t, lo, hi = display_map(m, how_norm, signed)
    d = d_t.cpu().numpy()
    keep = kept(m, req.threshold).cpu().numpy() if req.threshold is not None else None
    zero = min(max(-lo / (hi - lo), 0.0), 1.0) if hi > lo else (0.5 if signed else 0.0)  # where 0 is drawn
    for o in req.outputs:
        if o == "mask_png":
            out[o] = render.png_b64(render.mask(d, keep))
        elif o in ("heatmap_png", "overlay_png"):
            if o == "heatmap_png":
                rgb = render.heatmap(d, cmap, keep, zero)
            else:
                rgb = render.overlay(d, image, cmap, req.opacity, keep, req.contour)
            if req.colorbar:
                rgb = render.with_colorbar(rgb, cmap, lo, hi)
            out[o] = render.png_b64(rgb)
    return out
