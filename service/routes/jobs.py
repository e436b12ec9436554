"""Jobs: POST /v1/jobs queues an explain request and answers 202 at once; GET /v1/jobs/{id} gives its
status, progress and (once finished) its result or problem, for evaluate and compare jobs too
(``?wait=false``); DELETE /v1/jobs/{id} cancels it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from schemas.api import ExplainRequest, JobAccepted, JobState
from schemas.problems import CancelledProblem, NotFound
from schemas.queue import JobResult
from schemas.status import JobStatus
from service.answers import accepted, with_total
from service.bodies import JsonOrFormRoute
from service.deps import AUTH, GatewayDep
from service.problems import scrub
from service.quota import job_slots
from service.routes.explain import FORM_BODY
from service.spec import problems
from service.state import Gateway
from service.submit import submit_explain

LOCATION = {"Location": {"description": "the job: GET /v1/jobs/{id}", "schema": {"type": "string"}}}

router = APIRouter(tags=["jobs"], dependencies=AUTH, route_class=JsonOrFormRoute)


async def job_hash(gw: Gateway, job_id: str) -> dict[str, str]:
    h = await gw.queue.job_hash(job_id)
    if not h:
        raise NotFound(f"no job {job_id!r} (unknown, or its result expired)")
    return h


def finished_fields(result: JobResult, h: dict[str, str]) -> dict[str, Any]:
    """``result`` (with the time from creation to finish) or ``error`` of a finished job."""
    if result.status == JobStatus.done and result.response is not None:
        total_ms = round((float(h.get("finished", 0)) - float(h.get("created", 0))) * 1000, 3)
        return {"result": with_total(result.response, total_ms)}
    assert result.problem is not None
    return {"error": scrub(result.problem.model_dump(mode="json", exclude_none=True))}


async def job_state(gw: Gateway, job_id: str) -> dict[str, Any]:
    """The JobState body of a job: the worker's stored result as it is, timings aside."""
    h = await job_hash(gw, job_id)
    status = JobStatus(h.get("status", JobStatus.queued))
    state: dict[str, Any] = {
        "id": job_id,
        "status": status.value,
        "progress": float(h.get("progress", 0) or 0),
        "model": h.get("model"),
    }
    if status.finished:
        result = await gw.queue.result(job_id)
        if result is not None:
            state.update(finished_fields(result, h))
        elif status == JobStatus.cancelled:
            state["error"] = CancelledProblem("the job was cancelled").problem()
    return state


@router.post(
    "/v1/jobs",
    status_code=202,
    response_model=JobAccepted,
    responses={202: {"headers": LOCATION}, **problems(401, 404, 413, 422, 429, 503)},
    openapi_extra=FORM_BODY,
    summary="Queue an explain request as a job (JSON or multipart/form-data)",
)
async def create_job(req: ExplainRequest, gw: GatewayDep, request: Request) -> JSONResponse:
    async with job_slots(gw, request, 1) as ids:
        ids.append(await submit_explain(gw, req))
    return accepted(ids[0])


@router.get(
    "/v1/jobs/{job_id}",
    response_model=JobState,
    responses=problems(401, 404, 422, 429),
    summary="A job's status and progress; its result or problem once finished",
)
async def get_job(job_id: str, gw: GatewayDep) -> JSONResponse:
    return JSONResponse(await job_state(gw, job_id))


@router.delete(
    "/v1/jobs/{job_id}",
    response_model=JobState,
    responses={
        200: {"description": "The job had finished: nothing to cancel"},
        202: {"model": JobState, "description": "Cancellation requested: the worker stops at its next batch"},
        **problems(401, 404, 422, 429),
    },
    summary="Cancel a job",
)
async def cancel_job(job_id: str, gw: GatewayDep) -> JSONResponse:
    status = JobStatus((await job_hash(gw, job_id)).get("status", JobStatus.queued))
    if status.finished:
        return JSONResponse(await job_state(gw, job_id))
    await gw.queue.cancel(job_id, "client", mark_cancelled=status == JobStatus.queued)
    return JSONResponse(await job_state(gw, job_id), status_code=202)
