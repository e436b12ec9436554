"""A batch of explain requests on one model, end to end: decode, preprocess, predict,
resolve targets, run each distinct method call once over the samples that asked
for it, post-process and render. The worker loop and the CLI both call this."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from schemas.methods import CATALOG
from workers.errors import ExplainError, TargetError
from workers.explain import attribute
from workers.explain.base import NO_PROGRESS, Progress
from workers.explain.fused import FusedCall, FusedPass, call_key, plan_call
from workers.explain.postprocess import display_map, normalize, reduce_channels, resize
from workers.models.loading import LoadedModel
from workers.serving import render


@dataclass
class Item:
    """One request of a batch. ``request`` is a validated ExplainRequest dump."""

    request: dict[str, Any]
    image: Image.Image
    progress: Progress = NO_PROGRESS
    result: dict[str, Any] | None = None
    error: ExplainError | None = None
    compute_ms: float = 0.0
    explanations: list[dict] = field(default_factory=list)


def resolve_target(model: LoadedModel, target: int | str, predicted: int) -> int:
    if target == "predicted":
        return predicted
    if isinstance(target, int):
        if not 0 <= target < model.num_classes:
            raise TargetError(f"class index {target} out of range 0..{model.num_classes - 1}", field="target")
        return target
    if target in model.labels:
        return model.labels.index(target)
    if target.isdigit():
        return resolve_target(model, int(target), predicted)
    raise TargetError(f"unknown class label {target!r}; labels: {', '.join(model.labels)}", field="target")


def default_reduce(method: str, params: dict) -> str:
    """The method's catalog default; SmoothGrad reduces as its base method does (sum over IG)."""
    if method == "smoothgrad" and params.get("base") in CATALOG:
        method = params["base"]
    return CATALOG[method].default_reduce


def _call_key(call: dict) -> str:
    return call_key(call["name"], call.get("params"))


def _report(it: Item, fraction: float) -> None:
    """Progress of one item; a cancellation fails that item only."""
    if it.error is None:
        try:
            it.progress(fraction)
        except ExplainError as e:
            it.error = e


def _resolve_targets(
    model: LoadedModel, items: list[Item], idx: list[int], probs: torch.Tensor, targets: torch.Tensor
) -> None:
    for j, i in enumerate(idx):
        try:
            targets[i] = resolve_target(model, items[i].request.get("target", "predicted"), int(probs[j].argmax()))
        except ExplainError as e:
            items[i].error = e


def run_batch(model: LoadedModel, items: list[Item], fuse: bool = True) -> None:
    """Fill ``item.result`` or ``item.error`` for every item (never raises for one bad item).

    Items whose requests share the same set of fusable calls (``workers.explain.fused``)
    go through one fused pass: one forward gives the predictions and every fusable map,
    with one backward per distinct backward rule. The other calls run once per distinct
    call (same name and params) over the sub-batch of samples that asked for it.
    ``fuse=False`` runs every call through ``attribute()`` (the reference path)."""
    n = len(items)
    t0 = time.perf_counter()
    x = model.preprocess([it.image for it in items])
    calls_of: list[dict[str, dict]] = [{_call_key(c): c for c in it.request["methods"]} for it in items]
    n_calls = [len(it.request["methods"]) for it in items]
    done_calls = [0] * n
    prep_ms = (time.perf_counter() - t0) * 1000 / max(n, 1)
    predict_ms = [prep_ms] * n
    probs = torch.zeros(n, model.num_classes)
    targets = torch.zeros(n, dtype=torch.long)
    outs: dict[tuple[int, str], dict] = {}

    # fused passes: items grouped by their set of fusable calls
    plans: dict[str, FusedCall | None] = {}
    fused_keys: list[tuple[str, ...]] = []
    for i in range(n):
        keys = []
        if fuse:
            for key, call in calls_of[i].items():
                if key not in plans:
                    plans[key] = plan_call(model, call["name"], call.get("params"))
                if plans[key] is not None:
                    keys.append(key)
        fused_keys.append(tuple(sorted(keys)))
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, sig in enumerate(fused_keys):
        if sig:
            groups.setdefault(sig, []).append(i)
    for sig, idx in groups.items():
        t1 = time.perf_counter()
        fp = FusedPass(model, x[idx], [plans[k] for k in sig])
        logits = fp.forward()
        p = torch.softmax(logits.float(), dim=1)
        probs[idx] = p
        _resolve_targets(model, items, idx, p, targets)
        fwd_ms = (time.perf_counter() - t1) * 1000 / len(idx)
        for i in idx:
            predict_ms[i] += fwd_ms
        live = [j for j, i in enumerate(idx) if items[i].error is None]
        if not live:
            continue
        mask = torch.zeros(len(idx), dtype=torch.bool)
        mask[live] = True
        lead = items[idx[live[0]]]
        progress = lead.progress.sub(0.0, len(sig) / n_calls[idx[live[0]]]) if len(live) == 1 else NO_PROGRESS
        t1 = time.perf_counter()
        try:
            atts = fp.explain(targets[idx], mask, progress=progress)
        except ExplainError as e:
            for i in idx:
                items[i].error = items[i].error or e
            continue
        del fp
        ms = (time.perf_counter() - t1) * 1000 / (len(live) * len(sig))
        for j in live:
            i = idx[j]
            for key in sig:
                att, call = atts[key], calls_of[i][key]
                outs[(i, key)] = _render_one(
                    model,
                    items[i],
                    call,
                    att.maps[j : j + 1],
                    {**(call.get("params") or {}), **att.used_params},
                    {},
                    ms,
                )
            done_calls[i] += len(sig)
            if len(live) > 1:
                _report(items[i], done_calls[i] / n_calls[i])

    # predictions of the items no fused pass served
    rest = [i for i in range(n) if not fused_keys[i]]
    if rest:
        t1 = time.perf_counter()
        with torch.inference_mode():
            p = torch.softmax(model.module(x[rest]).float(), dim=1)
        p = p.clone()
        probs[rest] = p
        _resolve_targets(model, items, rest, p, targets)
        fwd_ms = (time.perf_counter() - t1) * 1000 / len(rest)
        for i in rest:
            predict_ms[i] += fwd_ms

    # the other calls: one attribute() per distinct call over the samples that asked for it
    agroups: dict[str, tuple[dict, list[int]]] = {}
    for i in range(n):
        if items[i].error is not None:
            continue
        for key, call in calls_of[i].items():
            if key not in fused_keys[i]:
                agroups.setdefault(key, (call, []))[1].append(i)
    for key, (call, idx) in agroups.items():
        idx = [i for i in idx if items[i].error is None]
        if not idx:
            continue
        lead = items[idx[0]]
        k = done_calls[idx[0]]
        progress = lead.progress.sub(k / n_calls[idx[0]], (k + 1) / n_calls[idx[0]]) if len(idx) == 1 else NO_PROGRESS
        t1 = time.perf_counter()
        try:
            att = attribute(model, x[idx], targets[idx], call["name"], call.get("params"), progress=progress)
        except ExplainError as e:
            for i in idx:
                items[i].error = e
            continue
        ms = (time.perf_counter() - t1) * 1000 / len(idx)
        for j, i in enumerate(idx):
            done_calls[i] += 1
            it = items[i]
            if len(idx) > 1:
                _report(it, done_calls[i] / n_calls[i])
            outs[(i, key)] = _render_one(
                model,
                it,
                call,
                att.maps[j : j + 1],
                {**(call.get("params") or {}), **att.used_params},
                att.meta[j] if att.meta else {},
                ms,
            )
    for i in range(n):
        it = items[i]
        if it.error is not None:
            continue
        p = probs[i]
        top = torch.topk(p, min(it.request.get("top_k", 5), model.num_classes))
        pred = int(top.indices[0])
        t = int(targets[i])
        explanations = [outs[(i, _call_key(c))] for c in it.request["methods"]]
        it.compute_ms = predict_ms[i] + sum(e["compute_ms"] for e in explanations)
        it.result = {
            "model": model.name,
            "prediction": {
                "class_index": pred,
                "label": model.labels[pred],
                "score": float(top.values[0]),
                "top_k": [
                    {"class_index": int(c), "label": model.labels[int(c)], "score": float(s)}
                    for s, c in zip(top.values, top.indices)
                ],
            },
            "target": {"class_index": t, "label": model.labels[t]},
            "explanations": explanations,
        }


def _render_one(
    model: LoadedModel, it: Item, call: dict, raw: torch.Tensor, params: dict, meta: dict, compute_ms: float
) -> dict:
    req = it.request
    how = req.get("reduce") or default_reduce(call["name"], params)
    if how == "single":
        how = "max_abs"
    w, h = it.image.size
    m = reduce_channels(raw.detach().float(), how)
    m = resize(m, (h, w))[0]
    raw_range = [float(m.min()), float(m.max())]
    norm = req.get("normalize", "minmax")
    mn = normalize(m, norm)
    out: dict[str, Any] = {
        "method": call["name"],
        "params": params,
        "raw_range": raw_range,
        "compute_ms": round(compute_ms, 3),
        "metadata": meta,
    }
    outputs = req.get("outputs") or ["heatmap_png"]
    disp = display_map(mn, norm).cpu().numpy() if any(o != "array" for o in outputs) else None
    cmap = req.get("colormap", "jet")
    for o in outputs:
        if o == "heatmap_png":
            out["heatmap_png"] = render.heatmap_png(disp, cmap)
        elif o == "mask_png":
            out["mask_png"] = render.mask_png(disp)
        elif o == "overlay_png":
            out["overlay_png"] = render.overlay_png(disp, it.image, cmap)
        elif o == "array":
            a = mn.cpu().numpy()
            out["array"] = render.array_out(a[0] if a.shape[0] == 1 else a)
    return out
