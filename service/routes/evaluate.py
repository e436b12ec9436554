"""POST /v1/evaluate (metrics of methods' maps on images, survey §7) and POST /v1/compare (map-vs-map
metrics); each answers when done, or 202 with a job to poll for ``?wait=false``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from schemas.api import CompareRequest, CompareResponse, EvaluateRequest, EvaluateResponse, JobAccepted
from service.answers import answer
from service.bodies import JsonBodyRoute
from service.deps import AUTH, GatewayDep, ReceivedAt
from service.quota import job_slots
from service.spec import problems
from service.submit import submit_compare, submit_evaluate

AS_JOB: dict[int | str, dict[str, Any]] = {
    202: {"model": JobAccepted, "description": "?wait=false: queued as a job, at the Location header"}
}
RESPONSES = {**AS_JOB, **problems(401, 404, 409, 413, 422, 429, 500, 503, 504)}

router = APIRouter(tags=["evaluate"], dependencies=AUTH, route_class=JsonBodyRoute)


@router.post(
    "/v1/evaluate",
    response_model=EvaluateResponse,
    responses=RESPONSES,
    summary="Survey §7 metrics of methods on images (?wait=false: run as a job)",
)
async def evaluate(
    req: EvaluateRequest, gw: GatewayDep, received: ReceivedAt, request: Request, wait: bool = True
) -> JSONResponse:
    async with job_slots(gw, request, 1) as ids:
        ids.append(await submit_evaluate(gw, req))
    return await answer(gw, ids[0], received, wait)


@router.post(
    "/v1/compare",
    response_model=CompareResponse,
    responses=RESPONSES,
    summary="Map-vs-map metrics: two maps, or two methods on one image",
)
async def compare(
    req: CompareRequest, gw: GatewayDep, received: ReceivedAt, request: Request, wait: bool = True
) -> JSONResponse:
    async with job_slots(gw, request, 1) as ids:
        ids.append(await submit_compare(gw, req))
    return await answer(gw, ids[0], received, wait)
