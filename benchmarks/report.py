"""Markdown tables from the benchmark rows (the tables of docs/performance.md)."""

from __future__ import annotations

from benchmarks.common import fmt_ms, fmt_ratio


def _table(head: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def render(rows: list[dict], machine: dict, command: str) -> str:
    parts = [
        f"Command: `{command}`",
        "",
        f"Machine: {machine['cpu']}, {machine['cpus_usable']} usable CPUs, torch threads {machine['threads']}; "
        f"load average at start {machine['loadavg']}; Python {machine['python']}, torch {machine['torch']}, "
        f"torchvision {machine['torchvision']}, Captum {machine['captum']}, Zennit {machine['zennit']}; "
        f"{machine['time']}.",
        "",
    ]
    floors = {(r["model"], r["batch"]): r for r in rows if r["kind"] == "floor"}
    if floors:
        parts += [
            "### Physical floor (median ms)",
            "",
            _table(
                ["model", "batch", "forward", "forward + backward", "forward to the CAM/FEM layer"],
                [
                    [m, str(b), fmt_ms(r["fwd"]), fmt_ms(r["fwd_bwd"]), fmt_ms(r["to_layer"])]
                    for (m, b), r in floors.items()
                ],
            ),
            "",
        ]
    meth = [r for r in rows if r["kind"] == "method"]
    if meth:
        body = []
        for r in meth:
            if "error" in r:
                body.append(
                    [
                        r["model"],
                        str(r["batch"]),
                        r["label"],
                        "error",
                        r.get("reference") or "-",
                        "-",
                        "-",
                        "-",
                        r["error"][:80].replace("|", "/"),
                    ]
                )
                continue
            refname = r.get("reference") or "-"
            if r.get("ref_error"):
                refname += " (fails: " + r["ref_error"][:60].replace("|", "/") + ")"
            body.append(
                [
                    r["model"],
                    str(r["batch"]),
                    r["label"],
                    fmt_ms(r["ours"]),
                    refname,
                    fmt_ms(r.get("ref")),
                    fmt_ratio(r.get("ratio")),
                    f"{fmt_ratio(r['x_floor'])} ({r['floor_kind']})",
                    fmt_ratio(r.get("ref_x_floor")),
                ]
            )
        parts += [
            "### Per method (median ms; ratio = ours / reference; x floor = ours / the floor named)",
            "",
            _table(
                ["model", "batch", "method", "ours", "reference", "ref", "ours/ref", "ours x floor", "ref x floor"],
                body,
            ),
            "",
        ]
    multi = [r for r in rows if r["kind"] == "multi"]
    if multi:
        parts += [
            "### Six-method request [saliency, deconvnet, guided_backprop, gradcam, guided_gradcam, fem]",
            "",
            _table(
                [
                    "model",
                    "batch",
                    "fused",
                    "ours separately",
                    "references summed",
                    "fused / references",
                    "fused / ours separately",
                    "fused x fwd+bwd",
                ],
                [
                    [
                        r["model"],
                        str(r["batch"]),
                        fmt_ms(r["fused"]),
                        fmt_ms(r["separate_ours"]),
                        fmt_ms(r["separate_ref"]),
                        fmt_ratio(r["ratio_ref"]),
                        fmt_ratio(r["ratio_ours"]),
                        fmt_ratio(r["x_floor"]),
                    ]
                    for r in multi
                ],
            ),
            "",
        ]
    sweep = [r for r in rows if r["kind"] == "batch_sweep"]
    if sweep:
        parts += [
            "### Worker batch size (run_batch, ms per request)",
            "",
            _table(
                ["model", "methods", "batch", "fused", "unfused", "speed-up vs batch 1"],
                [
                    [
                        r["model"],
                        ", ".join(m if isinstance(m, str) else m["name"] for m in r["methods"]),
                        str(r["batch"]),
                        fmt_ms(r["fused_per_item"]),
                        fmt_ms(r["unfused_per_item"]),
                        fmt_ratio(r["speedup_vs_1"]),
                    ]
                    for r in sweep
                ],
            ),
            "",
        ]
    chunk = [r for r in rows if r["kind"] == "chunk"]
    if chunk:
        parts += [
            "### IG / SmoothGrad chunk size (internal_batch_size; median ms)",
            "",
            _table(
                ["model", "method", "batch", "chunk", "ms"],
                [[r["model"], r["method"], str(r["batch"]), str(r["chunk"]), fmt_ms(r["seconds"])] for r in chunk],
            ),
            "",
        ]
    e2e = [r for r in rows if r["kind"] == "e2e"]
    if e2e:
        parts += [
            "### End to end (HTTP on loopback; latency ms; overhead = client latency - queue_ms - batch_ms; "
            "gateway-side = the gateway's total_ms - queue_ms - batch_ms)",
            "",
            _table(
                [
                    "model",
                    "worker",
                    "concurrency",
                    "requests",
                    "req/s",
                    "p50",
                    "p95",
                    "p99",
                    "mean batch",
                    "overhead p50",
                    "overhead p99",
                    "gateway-side p50",
                    "gateway-side p99",
                    "errors",
                ],
                [
                    [
                        r["model"],
                        r["config"],
                        str(r["concurrency"]),
                        str(r["requests"]),
                        f"{r['throughput']:.2f}",
                        fmt_ms(r["p50"]),
                        fmt_ms(r["p95"]),
                        fmt_ms(r["p99"]),
                        f"{r['mean_batch']:.1f}",
                        fmt_ms(r["overhead_p50"]),
                        fmt_ms(r["overhead_p99"]),
                        fmt_ms(r.get("gateway_overhead_p50")),
                        fmt_ms(r.get("gateway_overhead_p99")),
                        str(r["errors"]),
                    ]
                    for r in e2e
                ],
            ),
            "",
        ]
    return "\n".join(parts)
