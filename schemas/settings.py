"""Configuration: every environment variable the processes read, with its default and bounds, in
one ``BaseSettings`` (pydantic-settings). Nothing else reads the environment.

Variables are ``WHITEBOX_<FIELD>`` (``REDIS_URL`` and ``WHITEBOX_MODELS`` keep their short names).
A bad value stops the process with one line naming the variable (:meth:`Settings.from_env`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "WHITEBOX_"
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="ignore", populate_by_name=True, case_sensitive=False
    )

    redis_url: str | None = Field(
        None,
        validation_alias=AliasChoices("REDIS_URL", "WHITEBOX_REDIS_URL"),
        description="redis://host:port/db of the queue; unset: `whitebox serve` starts an embedded Redis",
    )
    models_path: str | None = Field(
        None,
        validation_alias=AliasChoices("WHITEBOX_MODELS", "WHITEBOX_MODELS_PATH"),
        description="registry YAML; unset: workers/models/registry/default.yaml",
    )
    host: str = Field("127.0.0.1", description="gateway bind address")
    port: int = Field(8000, ge=1, le=65535, description="gateway port")
    api_keys: Annotated[frozenset[str], NoDecode] = Field(
        frozenset(), description="comma-separated API keys; empty: no authentication"
    )
    log_level: LogLevel = Field("INFO", description="log level of every process")
    data_dir: Path = Field(Path(".whitebox-data"), description="`whitebox serve`: the embedded Redis' directory")
    # limits
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="largest request body")
    max_image_pixels: int = Field(4096 * 4096, ge=1, description="largest image (width x height), checked first")
    request_timeout_s: float = Field(120.0, gt=0, description="synchronous explain: wait this long for the result")
    max_queue_depth: int = Field(256, ge=1, description="jobs queued per model before 503 + Retry-After")
    result_ttl_s: int = Field(3600, ge=1, description="how long results and job states are kept")
    # worker
    # dynamic batching, measured in docs/performance.md: up to 8 jobs per batch (ResNet-18 at
    # 224: 1.5x cheaper per request at 8 than alone, little beyond); no added wait (greedy
    # batching of what queued while the worker was busy, Triton's default): a wait only
    # delays a lone request and gave no throughput at concurrency 4 or 16 on this machine
    max_batch_size: int = Field(8, ge=1, le=1024, description="jobs read and run together")
    max_queue_delay_ms: float = Field(0.0, ge=0, description="wait this long to fill a batch")
    claim_idle_ms: int = Field(30_000, ge=1, description="take over a job idle this long (its worker died)")
    max_deliveries: int = Field(3, ge=1, description="deliveries before a job goes to the dead-letter stream")
    worker_threads: int = Field(0, ge=0, description="torch threads; 0: the CPUs this process may use")
    worker_models: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="comma-separated models this worker serves; empty: all of the registry"
    )
    worker_metrics_port: int = Field(0, ge=0, le=65535, description="worker's Prometheus port; 0: none")
    worker_metrics_host: str = Field("127.0.0.1", description="worker's Prometheus bind address")
    # Redis outages (issue 11): bounded waits, 503 + Retry-After, reconnect with backoff
    redis_timeout_s: float = Field(
        1.0, gt=0, le=30, description="connect/read timeout of one Redis call; a route answers 503 within about this"
    )
    retry_after_s: int = Field(2, ge=1, description="Retry-After of a 503 while Redis is unreachable")
    worker_restarts: int = Field(
        5, ge=0, description="`whitebox serve`: worker restarts within restart_window_s before the stack stops"
    )
    restart_window_s: float = Field(60.0, gt=0, description="`whitebox serve`: the window of worker_restarts")
    redis_maxmemory: str = Field(
        "1gb", description="`whitebox serve`: the embedded Redis' maxmemory (policy volatile-ttl: queued jobs stay)"
    )
    # cost budgets (issue 11)
    max_request_cost: float = Field(
        10_000.0,
        gt=0,
        description="largest estimated cost of a request, in forward passes at the model's input size (a backward "
        "counts 2; schemas/cost.py); over it: 422 before queueing",
    )
    job_memory_bytes: int = Field(
        2 * 1024**3, ge=64 * 1024**2, description="memory bound of one job; internal batches are sized from it"
    )
    max_result_bytes: int = Field(
        256 * 1024**2,
        ge=1024,
        le=512 * 1024**2,
        description="largest stored result (estimated up front, checked before storing); at most Redis' 512 MB",
    )
    # auth and abuse (issue 11)
    api_key_hashes: Annotated[frozenset[str], NoDecode] = Field(
        frozenset(), description="comma-separated salted API-key hashes (`whitebox hash-key` prints one)"
    )
    rate_limit_rps: float = Field(0.0, ge=0, description="requests per second per API key (token bucket); 0: none")
    rate_limit_burst: int = Field(50, ge=1, description="requests a key may send at once above rate_limit_rps")
    max_jobs_per_key: int = Field(0, ge=0, description="queued or running jobs per API key; 0: no quota")
    auth_failures_per_min: int = Field(30, ge=1, description="wrong keys per client address a minute before 429")
    max_json_depth: int = Field(32, ge=2, description="deepest nesting of a JSON body")
    header_timeout_s: float = Field(10.0, gt=0, description="time a client has to send the request's headers")
    body_timeout_s: float = Field(60.0, gt=0, description="time a client has to send the whole request body")
    max_connections: int = Field(1000, ge=1, description="open connections of the gateway before 503")
    registry_architectures: Annotated[tuple[str, ...], NoDecode] = Field(
        ("torchvision.", "whitebox."), description="comma-separated module prefixes a registry architecture may name"
    )
    registry_any_path: bool = Field(False, description="registry weights/labels may lie outside the registry folder")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _keys(cls, v: object) -> object:
        if isinstance(v, str):
            return frozenset(k.strip() for k in v.split(",") if k.strip())
        return v

    @field_validator("api_key_hashes", mode="before")
    @classmethod
    def _hashes(cls, v: object) -> object:
        if isinstance(v, str):
            return frozenset(k.strip() for k in v.split(",") if k.strip())
        return v

    @field_validator("worker_models", "registry_architectures", mode="before")
    @classmethod
    def _models(cls, v: object) -> object:
        if isinstance(v, str):
            return tuple(m.strip() for m in v.split(",") if m.strip())
        return v

    @field_validator("redis_url", "models_path", mode="before")
    @classmethod
    def _empty_is_unset(cls, v: object) -> object:
        return None if v == "" else v

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, v: object) -> object:
        return v.upper() if isinstance(v, str) else v

    @classmethod
    def from_env(cls) -> Settings:
        """The settings of this process; a bad variable is a one-line SystemExit naming it."""
        try:
            return cls()
        except ValidationError as e:
            raise SystemExit(f"whitebox: bad configuration: {describe_errors(e)}") from None


def env_name(field: str) -> str:
    info = Settings.model_fields[field]
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return ENV_PREFIX + field.upper()


def describe_errors(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        field = str(err["loc"][0]) if err["loc"] else "?"
        name = env_name(field) if field in Settings.model_fields else field
        parts.append(f"{name}={err.get('input')!r}: {err['msg']}")
    return "; ".join(parts)
