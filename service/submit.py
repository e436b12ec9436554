"""A validated request becomes a typed job on its model's stream (``schemas.queue``), once the checks
at the door passed (``service.admission``: model, target, methods, cost, result size, images); the job
carries the target resolved to a class index. A multi-image request is admitted whole or refused whole."""

from __future__ import annotations

import base64

from common.decoded import Decoded
from schemas.api import CompareRequest, EvaluateRequest, ExplainRequest
from schemas.queue import CompareJob, EvaluateJob, ExplainJob, new_job_id
from service.admission import admit, check_cost, check_image, check_images, check_result
from service.state import Gateway


async def explain_job(gw: Gateway, req: ExplainRequest, field: str = "image") -> ExplainJob:
    """The job of one explain request once every check passed (``field``: where its image is)."""
    index = await admit(gw, req.model, req.target, req.methods)
    check_cost(gw, req.model, req.methods)
    decoded = await check_image(gw, req.image, field, req.window(), req.frame)
    check_result(gw, (decoded.info.width, decoded.info.height), len(req.methods), req.outputs)
    return ExplainJob(id=new_job_id(), model=req.model, request=carried(req, decoded), target_index=index)


def payload_b64(image: str, decoded: Decoded) -> str:
    """What a job carries for an image: the bytes sent, or the decoder's payload where it has one (a DICOM
    file without its patient data: the bytes sent never reach Redis)."""
    return image if decoded.payload is None else base64.b64encode(decoded.payload).decode()


def carried(req: ExplainRequest, decoded: Decoded) -> ExplainRequest:
    if decoded.payload is None:
        return req
    return req.model_copy(update={"image": payload_b64(req.image, decoded)})


async def submit_explain(gw: Gateway, req: ExplainRequest) -> str:
    return await gw.queue.enqueue(await explain_job(gw, req))


async def submit_explains(gw: Gateway, reqs: list[ExplainRequest], field: str = "instances") -> list[str]:
    """Every request checked first (the cost of all of them together too), then all queued or none."""
    jobs = [await explain_job(gw, r, f"{field}.{i}") for i, r in enumerate(reqs)]
    if reqs:
        check_cost(gw, reqs[0].model, reqs[0].methods, images=len(reqs))
    return await gw.queue.enqueue_many(jobs)


async def submit_evaluate(gw: Gateway, req: EvaluateRequest) -> str:
    index = await admit(gw, req.model, req.target, req.methods)
    check_cost(gw, req.model, req.methods, images=len(req.images), metrics=req.metrics)
    carried_images = [payload_b64(im, await check_image(gw, im, f"images.{i}")) for i, im in enumerate(req.images)]
    if carried_images != req.images:
        req = req.model_copy(update={"images": carried_images})
    gts = req.ground_truth
    named = [(f"ground_truth.{i}", g) for i, g in enumerate(gts)] if isinstance(gts, list) else [("ground_truth", gts)]
    await check_images(gw, [(f"{name}.mask_png", gt.mask_png) for name, gt in named if gt is not None])
    return await gw.queue.enqueue(EvaluateJob(id=new_job_id(), model=req.model, request=req, target_index=index))


async def submit_compare(gw: Gateway, req: CompareRequest) -> str:
    """Two methods on an image of a model, or two maps (any worker computes those: the first model's)."""
    index = None
    if req.model is not None:
        index = await admit(gw, req.model, req.target, req.methods or [])
        check_cost(gw, req.model, req.methods or [])
    if req.image:
        carried_image = payload_b64(req.image, await check_image(gw, req.image))
        if carried_image != req.image:
            req = req.model_copy(update={"image": carried_image})
    maps = (("map_a", req.map_a), ("map_b", req.map_b))
    await check_images(gw, [(f"{k}.mask_png", m.mask_png) for k, m in maps if m is not None])
    model = req.model or gw.registry.models[0].name
    return await gw.queue.enqueue(CompareJob(id=new_job_id(), model=model, request=req, target_index=index))
