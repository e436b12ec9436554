"""``python -m benchmarks.event_loop``: does a large upload hold the gateway's event loop?

Starts an embedded Redis and one gateway (no worker: the explain job only has to be admitted), polls
``/v2/health/live`` every 5 ms, and meanwhile posts a ~12 MB JPEG (4000x3000 noise) to ``/v1/explain``
three times. Prints the liveness p50 and max when idle and during each upload (docs/robustness.md);
``--md PATH`` also writes the table."""

from __future__ import annotations

import argparse
import base64
import io
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from cli.embedded_redis import EmbeddedRedis, free_port

ROOT = Path(__file__).resolve().parent.parent


def big_jpeg(width: int = 4000, height: int = 3000) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8)).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def poll(url: str, out: list[float], stop: threading.Event) -> None:
    with httpx.Client(base_url=url, timeout=10) as c:
        while not stop.is_set():
            t = time.perf_counter()
            c.get("/v2/health/live")
            out.append((time.perf_counter() - t) * 1000)
            time.sleep(0.005)


def measure(url: str, during: dict | None, seconds: float = 2.0) -> tuple[float, float, int]:
    """Liveness p50 and max (ms) while idle for ``seconds`` or while ``during`` is posted."""
    lat: list[float] = []
    stop = threading.Event()
    th = threading.Thread(target=poll, args=(url, lat, stop))
    th.start()
    time.sleep(0.3)
    status = 0
    if during is None:
        time.sleep(seconds)
    else:
        status = httpx.post(url + "/v1/explain", json=during, timeout=120).status_code
    stop.set()
    th.join()
    return statistics.median(lat), max(lat), status


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--md", type=Path)
    args = ap.parse_args(argv)
    jpeg = big_jpeg()
    body = {"model": "shapes-cnn", "image": base64.b64encode(jpeg).decode(), "methods": ["gradcam"]}
    with tempfile.TemporaryDirectory() as tmp:
        redis = EmbeddedRedis(Path(tmp) / "redis").start()
        port = free_port()
        env = {
            **os.environ,
            "REDIS_URL": redis.url,
            "WHITEBOX_PORT": str(port),
            "WHITEBOX_MAX_BODY_BYTES": str(40_000_000),
            "WHITEBOX_REQUEST_TIMEOUT_S": "1",
            "WHITEBOX_LOG_LEVEL": "WARNING",
        }
        gw = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                try:
                    if httpx.get(url + "/v2/health/live", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            rows = [("idle", *measure(url, None))]
            rows += [(f"upload {i + 1}", *measure(url, body)) for i in range(args.runs)]
        finally:
            gw.terminate()
            gw.wait(10)
            redis.stop()
    lines = [
        f"JPEG of {len(jpeg) / 1e6:.1f} MB (4000x3000) posted to /v1/explain; /v2/health/live polled every 5 ms",
        "",
        "| while | live p50 ms | live max ms | explain status |",
        "|---|---|---|---|",
        *(f"| {name} | {p50:.1f} | {mx:.1f} | {st or '-'} |" for name, p50, mx, st in rows),
    ]
    print("\n".join(lines))
    if args.md:
        args.md.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
