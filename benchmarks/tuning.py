"""Measurements behind the defaults: the worker's batch size (``run_batch`` throughput per
batch size, the in-process part of dynamic batching) and the IG / SmoothGrad chunk size."""

from __future__ import annotations

import numpy as np
from PIL import Image

from benchmarks.common import interleaved
from workers.explain import attribute


def _items(model, n: int, methods: list, outputs: list[str]):
    from schemas.api import ExplainRequest
    from workers.serving.pipeline import Item

    h, w = model.input_size
    out = []
    for k in range(n):
        img = Image.fromarray((np.random.default_rng(k).random((h, w, 3)) * 255).astype(np.uint8))
        req = ExplainRequest.model_validate({"model": model.name, "image": "x", "methods": methods, "outputs": outputs})
        out.append(Item(request=req, image=img))
    return out


def batch_sweep(model, sizes: list[int], methods: list, runs: int, outputs=("heatmap_png",), log=print) -> list[dict]:
    """Per-request cost of ``run_batch`` over a batch of b identical-method requests (different
    images), fused and unfused: what the worker gains by batching, without the queue."""
    from workers.serving.pipeline import run_batch

    rows = []
    for b in sizes:
        fns = {
            "fused": lambda b=b: run_batch(model, _items(model, b, methods, list(outputs))),
            "unfused": lambda b=b: run_batch(model, _items(model, b, methods, list(outputs)), fuse=False),
        }
        tm = interleaved(fns, runs)
        row = {
            "kind": "batch_sweep",
            "model": model.name,
            "batch": b,
            "methods": methods,
            "fused_per_item": tm["fused"].median / b,
            "unfused_per_item": tm["unfused"].median / b,
        }
        rows.append(row)
        log(
            f"  {model.name} batch {b:3d}: {row['fused_per_item'] * 1000:.1f} ms/request fused, "
            f"{row['unfused_per_item'] * 1000:.1f} unfused"
        )
    base = rows[0]["fused_per_item"]
    for r in rows:
        r["speedup_vs_1"] = base / r["fused_per_item"]
    return rows


def chunk_sweep(model, x, t, method: str, sizes: list[int], runs: int, log=print) -> list[dict]:
    rows = []
    for s in sizes:
        params = {"internal_batch_size": s}
        if method == "integrated_gradients":
            params["steps"] = 50
        else:
            params["samples"] = 25
        tm = interleaved({"ours": lambda p=params: attribute(model, x, t, method, p)}, runs, budget_s=60)
        rows.append(
            {
                "kind": "chunk",
                "model": model.name,
                "method": method,
                "batch": x.shape[0],
                "chunk": s,
                "seconds": tm["ours"].median,
            }
        )
        log(f"  {model.name} {method} internal_batch_size {s:3d}: {tm['ours'].median * 1000:.0f} ms")
    return rows
