"""The KServe V1 protocol: GET /v1/models/{name} (readiness) and POST /v1/models/{name}:explain (each
instance explained like POST /v1/explain, with the request's ``parameters``; admitted whole or refused
whole: every instance is checked and the queue has room for all of them before any is queued)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.convertors import Convertor, register_url_convertor

from schemas.api import ExplainRequest, KServeExplainRequest, KServeExplainResponse, ModelReadiness
from schemas.problems import ValidationProblem
from schemas.registry import MODEL_NAME
from service.admission import known
from service.answers import elapsed_ms, responses_of
from service.bodies import JsonBodyRoute
from service.deps import AUTH, GatewayDep, ReceivedAt
from service.problems import validated
from service.quota import job_slots
from service.spec import problems
from service.submit import submit_explains

DEFAULTS = {"methods": ["gradcam"], "outputs": ["array"]}


class ModelName(Convertor[str]):
    """A model name as a path segment: no ':', so GET /v1/models/{name} does not also match the
    path of POST /v1/models/{name}:explain (whose 405 would then allow GET)."""

    regex = MODEL_NAME

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("model", ModelName())

router = APIRouter(tags=["kserve"], dependencies=AUTH, route_class=JsonBodyRoute)


def instance_requests(name: str, body: KServeExplainRequest) -> list[ExplainRequest]:
    """One ExplainRequest per instance; a parameter error locates under ``parameters``."""
    reqs = []
    for i, inst in enumerate(body.instances):
        image = inst if isinstance(inst, str) else inst.image_b64()
        if image is None:
            raise ValidationProblem(
                "each instance is a base64 image or {'data'|'b64': <base64>}", field=f"instances.{i}"
            )
        data = {**DEFAULTS, **(body.parameters or {}), "model": name, "image": image}
        reqs.append(validated(ExplainRequest, data, ("parameters",)))
    return reqs


@router.get(
    "/v1/models/{name:model}",
    response_model=ModelReadiness,
    responses=problems(401, 404, 422, 429),
    summary="Model readiness",
)
async def kserve_model(name: str, gw: GatewayDep) -> ModelReadiness:
    known(gw, name)
    return ModelReadiness(name=name, ready=name in await gw.queue.live_models())


@router.post(
    "/v1/models/{name:model}:explain",
    response_model=KServeExplainResponse,
    responses=problems(401, 404, 409, 413, 422, 429, 500, 503, 504),
    summary="Explain instances (KServe V1 explainer protocol)",
)
async def kserve_explain(
    name: str, body: KServeExplainRequest, gw: GatewayDep, received: ReceivedAt, request: Request
) -> JSONResponse:
    known(gw, name)
    reqs = instance_requests(name, body)
    async with job_slots(gw, request, len(reqs)) as ids:
        ids.extend(await submit_explains(gw, reqs))  # every instance admitted, or none queued
    answers = await responses_of(gw, ids)
    return JSONResponse(
        {
            "predictions": [a["prediction"] for a in answers],
            "explanations": [a["explanations"] for a in answers],
            "timings": {"total_ms": elapsed_ms(received)},
        }
    )
