"""One router per resource of the API (docs/architecture.md); ``service.app`` includes them in this order."""

from __future__ import annotations

from fastapi import APIRouter

from service.routes import discovery, evaluate, explain, health, jobs, kserve

ROUTERS: tuple[APIRouter, ...] = (
    explain.router,
    jobs.router,
    evaluate.router,
    discovery.router,
    health.router,
    kserve.router,
)
