"""The soak (issue 11, item 7; outside CI, ``make soak``): a real stack of its own on loopback (an
embedded Redis, ``python -m service``, ``python -m workers`` serving the demo model) under synchronous
``POST /v1/explain`` requests from ``--concurrency`` clients, a mix of methods and outputs, for
``--minutes``. Prints per minute the requests, errors, p50/p99 latency, the gateway's and the worker's
RSS (VmRSS of /proc/<pid>/status) and Redis' used_memory; at the end the RSS growth of each process
from the first full minute to the last (target: under 5 %). Stops by itself and writes JSON and
Markdown to benchmarks/results/soak-<date>.json/.md::

    .venv/bin/python -m benchmarks.soak --minutes 30 --concurrency 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis

from benchmarks.common import machine
from benchmarks.e2e import Stack, image_b64, write_registry
from benchmarks.report import _table

MODEL = "shapes-cnn"
TARGET_GROWTH_PCT = 5.0
METHODS: list[list[Any]] = [
    ["saliency", "gradcam"],
    ["guided_backprop", "fem"],
    [{"name": "lrp"}],
    [{"name": "integrated_gradients", "params": {"steps": 16}}],
    [{"name": "smoothgrad", "params": {"samples": 8, "seed": 3}}],
    ["deeplift", "deconvnet"],
    ["gradcam", "guided_gradcam", "saliency", "fem"],
]
OUTPUTS: list[list[str]] = [["heatmap_png"], ["array"], ["overlay_png", "array"]]


@dataclass
class Minute:
    requests: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)
    sample: dict[str, float] = field(default_factory=dict)

    def row(self, index: int) -> dict[str, Any]:
        p50, p99 = np.percentile(self.latencies, [50, 99]) if self.latencies else (float("nan"), float("nan"))
        return {
            "minute": index + 1,
            "requests": self.requests,
            "errors": self.errors,
            "error_codes": dict(self.codes),
            "p50_ms": float(p50) * 1000,
            "p99_ms": float(p99) * 1000,
            **self.sample,
        }


def code_version() -> str:
    """The commit measured (with ``+changes`` when the work tree differs from it), or ``unknown``."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "-uno"], cwd=root, capture_output=True, text=True)
    except OSError:
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def vm_rss_bytes(pid: int) -> int:
    """VmRSS of a process, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def sample(stack: Stack, r: redis.Redis) -> dict[str, float]:
    assert stack.worker is not None
    info = r.info("memory")
    return {
        "gateway_rss_mb": vm_rss_bytes(stack.gateway.pid) / 2**20,
        "worker_rss_mb": vm_rss_bytes(stack.worker.pid) / 2**20,
        "redis_used_mb": float(info["used_memory"]) / 2**20,
    }


def bodies(n_images: int = 32) -> list[dict[str, Any]]:
    """The request mix: seeded 64x64 images x method sets x outputs."""
    b64 = [image_b64(64, seed) for seed in range(n_images)]
    return [
        {"model": MODEL, "image": b64[k % n_images], "methods": METHODS[k % len(METHODS)], "outputs": OUTPUTS[k % 3]}
        for k in range(n_images * len(METHODS))
    ]


async def one(client: httpx.AsyncClient, body: dict[str, Any]) -> tuple[str, float]:
    t0 = time.perf_counter()
    try:
        r = await client.post("/v1/explain", json=body)
        code = str(r.status_code)
    except httpx.HTTPError as e:
        code = type(e).__name__
    return code, time.perf_counter() - t0


async def soak(stack: Stack, minutes: int, concurrency: int, log=print) -> list[Minute]:
    """``concurrency`` clients for ``minutes``; one sample of the processes at the end of each minute."""
    mix = bodies()
    r = redis.Redis.from_url(stack.redis.url, decode_responses=True)
    per = [Minute() for _ in range(minutes)]
    limits = httpx.Limits(max_connections=concurrency + 2, max_keepalive_connections=concurrency + 2)
    async with httpx.AsyncClient(base_url=stack.url, timeout=120, limits=limits) as client:
        for k in range(2 * concurrency):  # warm-up (first calls, caches), not counted
            await one(client, mix[k])
        t0 = time.monotonic()
        end = t0 + minutes * 60

        async def user(u: int) -> None:
            k = u
            while time.monotonic() < end:
                code, dt = await one(client, mix[k % len(mix)])
                k += concurrency
                m = per[min(int((time.monotonic() - t0) // 60), minutes - 1)]
                m.requests += 1
                if code == "200":
                    m.latencies.append(dt)
                else:
                    m.errors += 1
                    m.codes[code] += 1

        async def sampler() -> None:
            for i in range(minutes):
                await asyncio.sleep(max(0.0, t0 + (i + 1) * 60 - time.monotonic()))
                per[i].sample = sample(stack, r)
                log(line(per[i].row(i)), flush=True)

        await asyncio.gather(sampler(), *(user(u) for u in range(concurrency)))
    r.close()
    return per


def line(row: dict[str, Any]) -> str:
    return (
        f"  minute {row['minute']:3d}  requests {row['requests']:6d}  errors {row['errors']:3d}  "
        f"p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms  gateway RSS {row['gateway_rss_mb']:7.1f} MB  "
        f"worker RSS {row['worker_rss_mb']:7.1f} MB  Redis used {row['redis_used_mb']:6.1f} MB"
    )


def growth(rows: list[dict[str, Any]], key: str) -> float:
    """Percent change of ``key`` from the first full minute to the last."""
    first, last = rows[0][key], rows[-1][key]
    return (last - first) / first * 100


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    g, w = growth(rows, "gateway_rss_mb"), growth(rows, "worker_rss_mb")
    return {
        "requests": sum(r["requests"] for r in rows),
        "errors": sum(r["errors"] for r in rows),
        "gateway_rss_growth_pct": g,
        "worker_rss_growth_pct": w,
        "redis_used_growth_pct": growth(rows, "redis_used_mb"),
        "target_pct": TARGET_GROWTH_PCT,
        "within_target": max(abs(g), abs(w)) < TARGET_GROWTH_PCT,
    }


def summary_line(summ: dict[str, Any], minutes: int) -> str:
    return (
        f"{summ['requests']} requests, {summ['errors']} errors. RSS growth from minute 1 to minute {minutes}: "
        f"gateway {summ['gateway_rss_growth_pct']:+.1f} %, worker {summ['worker_rss_growth_pct']:+.1f} % "
        f"(target under {TARGET_GROWTH_PCT:.0f} %: {'met' if summ['within_target'] else 'NOT met'}); "
        f"Redis used_memory {summ['redis_used_growth_pct']:+.1f} %."
    )


def render(rows: list[dict[str, Any]], summ: dict[str, Any], mach: dict[str, Any], command: str) -> str:
    head = ["minute", "requests", "errors", "p50 ms", "p99 ms", "gateway RSS MB", "worker RSS MB", "Redis used MB"]
    body = [
        [
            str(r["minute"]),
            str(r["requests"]),
            str(r["errors"]),
            f"{r['p50_ms']:.1f}",
            f"{r['p99_ms']:.1f}",
            f"{r['gateway_rss_mb']:.1f}",
            f"{r['worker_rss_mb']:.1f}",
            f"{r['redis_used_mb']:.1f}",
        ]
        for r in rows
    ]
    return "\n".join(
        [
            f"Command: `{command}`",
            "",
            f"Machine: {mach['cpu']}, {mach['cpus_usable']} usable CPUs, worker torch threads 1; load average at "
            f"start {mach['loadavg']}; Python {mach['python']}, torch {mach['torch']}; code {mach['code']}; "
            f"{mach['time']}.",
            "",
            f"### Soak: sync POST /v1/explain on {MODEL} (a mix of {len(METHODS)} method sets and "
            f"{len(OUTPUTS)} output sets), per minute",
            "",
            _table(head, body),
            "",
            summary_line(summ, len(rows)),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--minutes", type=int, default=30)
    ap.add_argument("--concurrency", type=int, default=4)
    day = time.strftime("%Y-%m-%d", time.gmtime())
    ap.add_argument("--json", default=f"benchmarks/results/soak-{day}.json")
    ap.add_argument("--md", default=f"benchmarks/results/soak-{day}.md")
    args = ap.parse_args(argv)
    if args.minutes < 2 or args.concurrency < 1:
        ap.error("--minutes must be at least 2 (first full minute vs last) and --concurrency at least 1")
    command = "python -m benchmarks.soak " + " ".join(sys.argv[1:] if argv is None else argv)
    mach = {**machine(), "code": code_version()}
    with tempfile.TemporaryDirectory(prefix="whitebox-soak-") as d:
        tmp = Path(d)
        stack = Stack(tmp, write_registry(tmp, 64, []), threads=1)
        try:
            stack.start_worker({}, [MODEL])
            print(f"# soak: {args.minutes} min at concurrency {args.concurrency} on {stack.url}", flush=True)
            per = asyncio.run(soak(stack, args.minutes, args.concurrency))
        finally:
            stack.stop()
    rows = [m.row(i) for i, m in enumerate(per)]
    summ = summary(rows)
    md = render(rows, summ, mach, command)
    print(summary_line(summ, len(rows)), flush=True)
    for path, text in (
        (args.json, json.dumps({"machine": mach, "command": command, "rows": rows, "summary": summ}, indent=1)),
        (args.md, md),
    ):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    print(f"# wrote {args.json} and {args.md}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
