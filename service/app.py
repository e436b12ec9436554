"""The gateway: validates requests, enqueues typed jobs on the model's Redis stream and answers when the
worker has stored the result (docs/architecture.md). This module only assembles the app: state
(``service.state``), routers (``service.routes``), problem handlers, middleware and the offline docs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from schemas.settings import Settings
from service import docs, spec
from service.keys import parse_hash
from service.limits import BodyLimit
from service.problems import install_handlers
from service.routes import ROUTERS
from service.state import Gateway
from service.telemetry import RequestMetrics


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    queue = app.state.gateway.queue
    await queue.start()
    yield
    await queue.stop()


class WhiteboxAPI(FastAPI):
    def openapi(self) -> dict[str, Any]:
        """FastAPI's document, problem answers as application/problem+json (``service.spec``)."""
        if self.openapi_schema is None:
            self.openapi_schema = spec.problems_as_problem_json(super().openapi())
        return self.openapi_schema


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    for stored in settings.api_key_hashes:  # a malformed hash would never match: refuse it at start
        try:
            parse_hash(stored)
        except ValueError as e:
            raise SystemExit(f"whitebox: bad configuration: WHITEBOX_API_KEY_HASHES: {e}") from None
    app = WhiteboxAPI(
        title=spec.TITLE,
        version=spec.package_version(),
        description=spec.DESCRIPTION,
        openapi_tags=spec.TAGS,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    gateway = Gateway(settings)
    app.state.gateway = gateway
    install_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    docs.install(app)
    # the outermost middleware last: the body limit refuses before anything else runs
    app.add_middleware(RequestMetrics, metrics=gateway.metrics)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    return app
