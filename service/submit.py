"""A validated request becomes a typed job on its model's stream (``schemas.queue``), once the checks
at the door passed (``service.admission``); the job carries the target resolved to a class index."""

from __future__ import annotations

from schemas.api import CompareRequest, EvaluateRequest, ExplainRequest
from schemas.queue import CompareJob, EvaluateJob, ExplainJob, new_job_id
from service.admission import admit, check_image
from service.state import Gateway


async def submit_explain(gw: Gateway, req: ExplainRequest) -> str:
    index = await admit(gw, req.model, req.target, req.methods)
    check_image(gw, req.image)
    return await gw.queue.enqueue(ExplainJob(id=new_job_id(), model=req.model, request=req, target_index=index))


async def submit_evaluate(gw: Gateway, req: EvaluateRequest) -> str:
    index = await admit(gw, req.model, req.target, req.methods)
    for i, image in enumerate(req.images):
        check_image(gw, image, f"images.{i}")
    return await gw.queue.enqueue(EvaluateJob(id=new_job_id(), model=req.model, request=req, target_index=index))


async def submit_compare(gw: Gateway, req: CompareRequest) -> str:
    """Two methods on an image of a model, or two maps (any worker computes those: the first model's)."""
    index = None
    if req.model is not None:
        index = await admit(gw, req.model, req.target, req.methods or [])
    if req.image:
        check_image(gw, req.image)
    model = req.model or gw.registry.models[0].name
    return await gw.queue.enqueue(CompareJob(id=new_job_id(), model=model, request=req, target_index=index))
