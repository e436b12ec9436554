"""A batch of explain requests on one model, end to end: decode, preprocess, predict,
resolve targets, run each distinct method call once over the samples that asked
for it, post-process and render. The worker loop and the CLI both call this."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from workers import render
from workers.errors import ExplainError, TargetError
from workers.explain import attribute
from workers.explain.base import NO_PROGRESS, Progress
from workers.explain.postprocess import display_map, normalize, reduce_channels, resize
from workers.loading import LoadedModel
from schemas.methods import CATALOG


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
    return call["name"] + json.dumps(call.get("params") or {}, sort_keys=True)


def run_batch(model: LoadedModel, items: list[Item]) -> None:
    """Fill ``item.result`` or ``item.error`` for every item (never raises for one bad item)."""
    t0 = time.perf_counter()
    x = model.preprocess([it.image for it in items])
    with torch.inference_mode():
        probs = torch.softmax(model.module(x).float(), dim=1)
    live: list[int] = []
    targets = torch.zeros(len(items), dtype=torch.long)
    for i, it in enumerate(items):
        try:
            targets[i] = resolve_target(model, it.request.get("target", "predicted"), int(probs[i].argmax()))
            live.append(i)
        except ExplainError as e:
            it.error = e
    predict_ms = (time.perf_counter() - t0) * 1000 / max(len(items), 1)

    # group samples by identical method call: one call over the sub-batch
    groups: dict[str, tuple[dict, list[int]]] = {}
    for i in live:
        for call in items[i].request["methods"]:
            groups.setdefault(_call_key(call), (call, []))[1].append(i)
    n_calls = {i: len(items[i].request["methods"]) for i in live}
    done_calls = {i: 0 for i in live}
    outs: dict[tuple[int, str], dict] = {}
    for key, (call, idx) in groups.items():
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
                it.progress(done_calls[i] / n_calls[i])
            outs[(i, key)] = _render_one(model, it, call, att.maps[j:j + 1], {**(call.get("params") or {}), **att.used_params},
                                         att.meta[j] if att.meta else {}, ms)
    for i in live:
        it = items[i]
        if it.error is not None:
            continue
        p = probs[i]
        top = torch.topk(p, min(it.request.get("top_k", 5), model.num_classes))
        pred = int(top.indices[0])
        t = int(targets[i])
        explanations = [outs[(i, _call_key(c))] for c in it.request["methods"]]
        it.compute_ms = predict_ms + sum(e["compute_ms"] for e in explanations)
        it.result = {
            "model": model.name,
            "prediction": {"class_index": pred, "label": model.labels[pred], "score": float(top.values[0]),
                           "top_k": [{"class_index": int(c), "label": model.labels[int(c)], "score": float(s)}
                                     for s, c in zip(top.values, top.indices)]},
            "target": {"class_index": t, "label": model.labels[t]},
            "explanations": explanations,
        }


def _render_one(model: LoadedModel, it: Item, call: dict, raw: torch.Tensor, params: dict, meta: dict,
                compute_ms: float) -> dict:
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
    out: dict[str, Any] = {"method": call["name"], "params": params, "raw_range": raw_range,
                           "compute_ms": round(compute_ms, 3), "metadata": meta}
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
