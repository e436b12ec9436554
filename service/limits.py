"""Body-size limit as a pure ASGI middleware: refuses by Content-Length, and counts
streamed bodies so a chunked upload cannot exceed the limit either."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from schemas.problems import PayloadTooLarge, Problem


def problem_response_bytes(p: Problem) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    body = json.dumps(p.problem()).encode()
    headers = [(b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode())]
    return p.status, headers, body


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if declared_length(scope) > self.max_bytes:
            await self._refuse(send, declared_length(scope))
            return
        seen = 0
        sent_start = False

        async def limited_receive() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge()
            return msg

        async def tracking_send(msg: Message) -> None:
            nonlocal sent_start
            if msg["type"] == "http.response.start":
                sent_start = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not sent_start:
                await self._refuse(send, seen)

    async def _refuse(self, send: Send, n: int) -> None:
        status, headers, body = problem_response_bytes(
            PayloadTooLarge(f"request body of {n}+ bytes is over the limit of {self.max_bytes} bytes")
        )
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def declared_length(scope: Scope) -> int:
    """The Content-Length header's value (0 when absent or not a number; the last one counts)."""
    n = 0
    for k, v in scope.get("headers", []):
        if k == b"content-length":
            try:
                n = int(v)
            except ValueError:
                n = 0
    return n


class _TooLarge(Exception):
    pass
