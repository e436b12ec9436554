"""Probes and metadata (Open Inference Protocol): liveness and readiness (open), a model's metadata and
readiness (behind the API key), and the Prometheus metrics (open)."""

from __future__ import annotations

import contextlib
from typing import Any

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from schemas.api import Liveness, ModelMetadata, ModelReadiness, Readiness, TensorMetadata
from schemas.problems import Unavailable
from service.admission import known
from service.deps import AUTH, GatewayDep
from service.spec import problems

router = APIRouter(tags=["health"])

METRICS_TEXT: dict[int | str, dict[str, Any]] = {
    200: {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}
}


@router.get("/v2/health/live", response_model=Liveness, summary="Liveness")
async def live() -> Liveness:
    return Liveness(live=True)


@router.get("/v2/health/ready", response_model=Readiness, responses=problems(503), summary="Readiness")
async def ready(gw: GatewayDep) -> Readiness:
    """Ready when Redis answers and every model of the registry has a live worker."""
    try:
        await gw.queue.ping()
        live_set = await gw.queue.live_models()
    except RedisError as e:  # the answer is open: it never names Redis' address nor the error's text
        retry = {"Retry-After": str(gw.settings.retry_after_s)}
        raise Unavailable("the job queue (Redis) is unreachable", headers=retry) from e
    missing = [m.name for m in gw.registry.models if m.name not in live_set]
    if missing:
        raise Unavailable(f"no live worker for: {', '.join(missing)}")
    return Readiness(ready=True)


@router.get(
    "/v2/models/{name}",
    dependencies=AUTH,
    response_model=ModelMetadata,
    responses=problems(401, 404, 422, 429),
    summary="Model metadata",
)
async def model_metadata(name: str, gw: GatewayDep) -> ModelMetadata:
    h, w = known(gw, name).input.size
    return ModelMetadata(
        name=name,
        versions=["1"],
        platform="pytorch",
        inputs=[TensorMetadata(name="image", datatype="BYTES", shape=[-1])],
        outputs=[
            TensorMetadata(name="relevance", datatype="FP32", shape=[-1, -1, -1]),
            TensorMetadata(name="prediction", datatype="INT64", shape=[-1]),
        ],
        parameters={"input_size": [h, w], "classes": gw.labels[name]},
    )


@router.get(
    "/v2/models/{name}/ready",
    dependencies=AUTH,
    response_model=ModelReadiness,
    responses={
        503: {"model": ModelReadiness, "description": "No live worker serves the model"},
        **problems(401, 404, 422, 429),
    },
    summary="Model readiness",
)
async def model_ready(name: str, gw: GatewayDep, response: Response) -> ModelReadiness:
    known(gw, name)
    ok = name in await gw.queue.live_models()
    if not ok:
        response.status_code = 503
    return ModelReadiness(name=name, ready=ok)


@router.get("/metrics", response_class=Response, responses=METRICS_TEXT, summary="Prometheus metrics")
async def metrics(gw: GatewayDep) -> Response:
    with contextlib.suppress(Exception):  # the queue depths are a bonus: no Redis, still the metrics
        for m in gw.registry.models:
            await gw.queue.depth(m.name)
    return Response(generate_latest(gw.prom), media_type=CONTENT_TYPE_LATEST)
