"""End to end: a real stack (embedded Redis, ``python -m workers``, ``python -m service``) on
loopback, driven by an async httpx load generator at several concurrencies, with dynamic
batching on (the Settings defaults) and off (WHITEBOX_MAX_BATCH_SIZE=1); the gateway's own
overhead is the client's latency minus the worker's queue and batch time from the response."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
DEMO_WEIGHTS = ROOT / "workers" / "models" / "weights" / "shapes-cnn.safetensors"


def write_registry(tmp: Path, size: int, torchvision_models: list[str]) -> Path:
    import torch
    import torchvision
    from safetensors.torch import save_file

    from workers.training.shapes import LABELS

    models = [
        {
            "name": "shapes-cnn",
            "architecture": "whitebox.shapes_cnn",
            "weights": str(DEMO_WEIGHTS),
            "num_classes": 10,
            "labels": list(LABELS),
            "input": {"size": [64, 64], "mean": [0.5] * 3, "std": [0.25] * 3},
            "target_layer": "features.10",
        }
    ]
    for arch in torchvision_models:
        torch.manual_seed(0)
        net = getattr(torchvision.models, arch)(weights=None)
        path = tmp / f"{arch}.safetensors"
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
        models.append(
            {
                "name": arch,
                "architecture": f"torchvision.{arch}",
                "weights": path.name,
                "num_classes": 1000,
                "input": {"size": [size, size], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
            }
        )
    reg = tmp / "registry.yaml"
    reg.write_text(yaml.safe_dump({"models": models}))
    return reg


class Stack:
    def __init__(self, tmp: Path, registry: Path, threads: int):
        from cli.embedded_redis import EmbeddedRedis, free_port

        self.tmp = tmp
        self.redis = EmbeddedRedis(tmp / "redis").start()
        self.env = {
            **os.environ,
            "REDIS_URL": self.redis.url,
            "WHITEBOX_MODELS": str(registry),
            "WHITEBOX_WORKER_THREADS": str(threads),
            "WHITEBOX_LOG_LEVEL": "WARNING",
            "WHITEBOX_MAX_QUEUE_DEPTH": "10000",
            "WHITEBOX_REQUEST_TIMEOUT_S": "600",
            "PYTHONUNBUFFERED": "1",
        }
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.gateway = self._spawn(["-m", "service"], "gateway", {"WHITEBOX_PORT": str(self.port)})
        self.worker: subprocess.Popen | None = None

    def _spawn(self, args, name, extra):
        log = open(self.tmp / f"{name}.log", "a")
        return subprocess.Popen(
            [sys.executable, *args], env={**self.env, **extra}, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )

    def start_worker(self, extra: dict, models: list[str], timeout: float = 300) -> None:
        self.stop_worker()
        self.worker = self._spawn(["-m", "workers"], "worker", extra)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.worker.poll() is not None:
                raise RuntimeError("worker exited:\n" + (self.tmp / "worker.log").read_text()[-3000:])
            try:
                r = httpx.get(self.url + "/v1/models", timeout=2)
                if r.status_code == 200:
                    ready = {m["name"] for m in r.json()["models"] if m.get("ready")}
                    if set(models) <= ready:
                        return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.3)
        raise RuntimeError("worker not ready:\n" + (self.tmp / "worker.log").read_text()[-3000:])

    def stop_worker(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            self.worker.send_signal(signal.SIGTERM)
            try:
                self.worker.wait(20)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait()
        self.worker = None

    def stop(self) -> None:
        self.stop_worker()
        if self.gateway.poll() is None:
            self.gateway.terminate()
            try:
                self.gateway.wait(10)
            except subprocess.TimeoutExpired:
                self.gateway.kill()
        self.redis.stop()


def image_b64(size: int, seed: int) -> str:
    arr = (np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


async def load(url: str, body_of, concurrency: int, total: int) -> dict:
    lat: list[float] = []
    over: list[float] = []
    gw_over: list[float] = []
    batch_sizes: list[int] = []
    errors = 0
    counter = iter(range(total))
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

        async def user():
            nonlocal errors
            for k in counter:
                t0 = time.perf_counter()
                r = await client.post("/v1/explain", json=body_of(k))
                dt = time.perf_counter() - t0
                if r.status_code != 200:
                    errors += 1
                    continue
                tm = r.json()["timings"]
                lat.append(dt)
                worker_s = (tm.get("queue_ms", 0) + tm.get("batch_ms", tm.get("compute_ms", 0))) / 1000
                over.append(dt - worker_s)
                if "total_ms" in tm:
                    gw_over.append(tm["total_ms"] / 1000 - worker_s)
                batch_sizes.append(tm.get("batch_size", 1))

        t0 = time.perf_counter()
        await asyncio.gather(*(user() for _ in range(concurrency)))
        wall = time.perf_counter() - t0

    def pct(a, q):
        return float(np.percentile(a, q)) if a else float("nan")

    return {
        "concurrency": concurrency,
        "requests": len(lat),
        "errors": errors,
        "wall_s": wall,
        "throughput": len(lat) / wall if wall > 0 else float("nan"),
        "p50": pct(lat, 50),
        "p95": pct(lat, 95),
        "p99": pct(lat, 99),
        "overhead_p50": pct(over, 50),
        "overhead_p99": pct(over, 99),
        "gateway_overhead_p50": pct(gw_over, 50),
        "gateway_overhead_p99": pct(gw_over, 99),
        "mean_batch": statistics.mean(batch_sizes) if batch_sizes else float("nan"),
    }


def run_e2e(
    models: list[str],
    concurrencies: list[int],
    threads: int,
    requests_per_level: int,
    size: int,
    configs: dict[str, dict],
    methods: list,
    log=print,
) -> list[dict]:
    tv = [m for m in models if m != "shapes-cnn"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="whitebox-bench-") as d:
        tmp = Path(d)
        reg = write_registry(tmp, size, tv)
        stack = Stack(tmp, reg, threads)
        try:
            for cname, extra in configs.items():
                log(f"  worker config {cname}: {extra or 'Settings defaults'}")
                stack.start_worker(extra, models)
                for model in models:
                    img_size = 64 if model == "shapes-cnn" else size
                    imgs = [image_b64(img_size, s) for s in range(16)]

                    def body_of(k, model=model, imgs=imgs):
                        return {"model": model, "image": imgs[k % len(imgs)], "methods": methods}

                    asyncio.run(load(stack.url, body_of, 2, 4))  # warm-up (first calls, caches)
                    for c in concurrencies:
                        n = max(requests_per_level, 2 * c)
                        res = asyncio.run(load(stack.url, body_of, c, n))
                        res.update({"kind": "e2e", "config": cname, "model": model, "methods": methods})
                        rows.append(res)
                        log(
                            f"  {model:10s} {cname:11s} c={c:3d}  {res['throughput']:.2f} req/s  "
                            f"p50 {res['p50'] * 1000:.0f} p95 {res['p95'] * 1000:.0f} p99 {res['p99'] * 1000:.0f} ms  "
                            f"mean batch {res['mean_batch']:.1f}  overhead p50 {res['overhead_p50'] * 1000:.1f} "
                            f"p99 {res['overhead_p99'] * 1000:.1f} ms  errors {res['errors']}"
                        )
        finally:
            stack.stop()
    return rows
