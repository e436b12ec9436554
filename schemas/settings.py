"""Configuration from the environment (DESIGN.md §5): the one place for limits and defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


def _int(name: str, default: int) -> int:
    v = os.environ.get(name)
    return int(v) if v not in (None, "") else default


def _float(name: str, default: float) -> float:
    v = os.environ.get(name)
    return float(v) if v not in (None, "") else default


@dataclass(frozen=True)
class Settings:
    redis_url: str | None = None
    models_path: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: frozenset[str] = field(default_factory=frozenset)
    # limits
    max_body_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    request_timeout_s: float = 120.0
    max_queue_depth: int = 256
    result_ttl_s: int = 3600
    # worker
    # dynamic batching, measured in docs/performance.md: up to 8 jobs per batch (ResNet-18 at
    # 224: 1.5x cheaper per request at 8 than alone, little beyond); no added wait (greedy
    # batching of what queued while the worker was busy, Triton's default): a wait only
    # delays a lone request and gave no throughput at concurrency 4 or 16 on this machine
    max_batch_size: int = 8
    max_queue_delay_ms: float = 0.0
    claim_idle_ms: int = 30_000
    max_deliveries: int = 3
    worker_threads: int = 0  # 0: the CPUs this process may use

    @classmethod
    def from_env(cls) -> Settings:
        keys = os.environ.get("WHITEBOX_API_KEYS", "")
        return cls(
            redis_url=os.environ.get("REDIS_URL") or None,
            models_path=os.environ.get("WHITEBOX_MODELS") or None,
            host=os.environ.get("WHITEBOX_HOST", "127.0.0.1"),
            port=_int("WHITEBOX_PORT", 8000),
            api_keys=frozenset(k.strip() for k in keys.split(",") if k.strip()),
            max_body_bytes=_int("WHITEBOX_MAX_BODY_BYTES", cls.max_body_bytes),
            max_image_pixels=_int("WHITEBOX_MAX_IMAGE_PIXELS", cls.max_image_pixels),
            request_timeout_s=_float("WHITEBOX_REQUEST_TIMEOUT_S", cls.request_timeout_s),
            max_queue_depth=_int("WHITEBOX_MAX_QUEUE_DEPTH", cls.max_queue_depth),
            result_ttl_s=_int("WHITEBOX_RESULT_TTL_S", cls.result_ttl_s),
            max_batch_size=_int("WHITEBOX_MAX_BATCH_SIZE", cls.max_batch_size),
            max_queue_delay_ms=_float("WHITEBOX_MAX_QUEUE_DELAY_MS", cls.max_queue_delay_ms),
            claim_idle_ms=_int("WHITEBOX_CLAIM_IDLE_MS", cls.claim_idle_ms),
            max_deliveries=_int("WHITEBOX_MAX_DELIVERIES", cls.max_deliveries),
            worker_threads=_int("WHITEBOX_WORKER_THREADS", 0),
        )
