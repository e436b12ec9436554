"""Request metrics of the gateway as a pure ASGI middleware: every HTTP request counted by its route
template, method and status, and timed to the start of its answer (metric names: ``common.telemetry``;
docs/architecture.md)."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.telemetry import GatewayMetrics


class RequestMetrics:
    def __init__(self, app: ASGIApp, metrics: GatewayMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()

        async def send_and_note(message: Message) -> None:
            if message["type"] == "http.response.start":  # noted before the body goes out, as an answer
                path = getattr(scope.get("route"), "path", "unmatched")
                self.metrics.requests.labels(path, scope["method"], str(message["status"])).inc()
                self.metrics.latency.labels(path).observe(time.perf_counter() - t0)
            await send(message)

        await self.app(scope, receive, send_and_note)
