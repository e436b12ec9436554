"""Body-size limit as a pure ASGI middleware: refuses by Content-Length, and counts
streamed bodies so a chunked upload cannot exceed the limit either."""

from __future__ import annotations

import json

from schemas.problems import PayloadTooLarge


def problem_response_bytes(p) -> tuple[int, list, bytes]:
    body = json.dumps(p.problem()).encode()
    headers = [(b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode())]
    return p.status, headers, body


class BodyLimit:
    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    n = int(v)
                except ValueError:
                    n = 0
                if n > self.max_bytes:
                    return await self._refuse(send, n)
        seen = 0
        sent_start = False

        async def limited_receive():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge()
            return msg

        async def tracking_send(msg):
            nonlocal sent_start
            if msg["type"] == "http.response.start":
                sent_start = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not sent_start:
                await self._refuse(send, seen)

    async def _refuse(self, send, n: int):
        status, headers, body = problem_response_bytes(
            PayloadTooLarge(f"request body of {n}+ bytes is over the limit of {self.max_bytes} bytes")
        )
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass
