"""GET /v1/models (the models served: the worker's card, with layers and applicable methods) and
GET /v1/methods (the method catalog with each method's params schema)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from schemas.api import MethodInfo, MethodList, ModelList
from schemas.methods import CATALOG
from schemas.registry import ModelEntry
from service.deps import AUTH, GatewayDep
from service.spec import problems
from service.state import Gateway

router = APIRouter(tags=["discovery"], dependencies=AUTH)


def registry_info(entry: ModelEntry, labels: list[str]) -> dict[str, Any]:
    """A model's ModelInfo before any worker published its card: what the registry says."""
    return {
        "name": entry.name,
        "architecture": entry.architecture,
        "description": entry.description,
        "classes": labels,
        "num_classes": entry.num_classes,
        "input": {
            "size": list(entry.input.size),
            "mean": entry.input.mean,
            "std": entry.input.std,
            "channels": entry.input.channels,
        },
        "layers": None,
        "default_layer": entry.target_layer,
        "methods": None,
        "ready": False,
    }


async def model_info(gw: Gateway, entry: ModelEntry, live: set[str]) -> dict[str, Any]:
    card = await gw.queue.card(entry.name)
    if card is None:
        return registry_info(entry, gw.labels[entry.name])
    return {**card, "ready": entry.name in live}


@router.get("/v1/models", response_model=ModelList, responses=problems(401, 429), summary="The models served")
async def list_models(gw: GatewayDep) -> JSONResponse:
    live = await gw.queue.live_models()
    return JSONResponse({"models": [await model_info(gw, m, live) for m in gw.registry.models]})


@router.get("/v1/methods", response_model=MethodList, responses=problems(401, 429), summary="The method catalog")
async def list_methods() -> MethodList:
    return MethodList(methods=[MethodInfo.model_validate(spec.describe()) for spec in CATALOG.values()])
