"""POST /v1/explain: the maps of one image, answered when the worker has them (JSON, or the same
fields as multipart/form-data with the image as a file)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from schemas.api import ExplainForm, ExplainRequest, ExplainResponse
from service.answers import answer
from service.bodies import JsonOrFormRoute
from service.deps import AUTH, GatewayDep, ReceivedAt
from service.quota import job_slots
from service.spec import problems
from service.submit import submit_explain

# the multipart form next to the JSON body FastAPI documents (service.bodies turns one into the other)
FORM_BODY: dict[str, Any] = {
    "requestBody": {"content": {"multipart/form-data": {"schema": ExplainForm.model_json_schema()}}}
}
EXPLAIN_PROBLEMS = problems(401, 404, 409, 413, 422, 429, 500, 503, 504)

router = APIRouter(tags=["explain"], dependencies=AUTH, route_class=JsonOrFormRoute)


@router.post(
    "/v1/explain",
    response_model=ExplainResponse,
    responses=EXPLAIN_PROBLEMS,
    openapi_extra=FORM_BODY,
    summary="Explain one image synchronously (JSON or multipart/form-data)",
)
async def explain(req: ExplainRequest, gw: GatewayDep, received: ReceivedAt, request: Request) -> JSONResponse:
    """The prediction and one map per method, rendered as asked; ``timings.total_ms`` since arrival."""
    async with job_slots(gw, request, 1) as ids:
        ids.append(await submit_explain(gw, req))
    return await answer(gw, ids[0], received)
