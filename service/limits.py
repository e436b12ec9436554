"""Limits on how a request body arrives, as a pure ASGI middleware: a body over ``max_bytes`` is refused
with 413 by its Content-Length before it is read, and a streamed (chunked) one as soon as it passes the
limit; a body not received in full within ``timeout_s`` of the first read is answered 408. Both answers
close the connection (the rest of the body is never read; docs/robustness.md)."""

from __future__ import annotations

import asyncio
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from schemas.problems import PayloadTooLarge, Problem, RequestTimeout


def problem_response_bytes(p: Problem) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    body = json.dumps(p.problem()).encode()
    headers = [(b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode())]
    return p.status, headers, body


class _Refused(Exception):
    """Raised from ``receive`` inside the app; the middleware answers ``problem`` instead."""

    def __init__(self, problem: Problem):
        super().__init__(problem.detail)
        self.problem = problem


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float | None = None):
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if declared_length(scope) > self.max_bytes:
            await refuse(send, self.too_large(declared_length(scope)))
            return
        seen = 0
        sent_start = False
        deadline: float | None = None
        complete = False

        async def limited_receive() -> Message:
            nonlocal seen, deadline, complete
            if complete:  # the body is in: a later receive waits for the disconnect, with no deadline
                return await receive()
            if deadline is None and self.timeout_s is not None:
                deadline = asyncio.get_running_loop().time() + self.timeout_s
            try:
                async with asyncio.timeout_at(deadline):
                    msg = await receive()
            except TimeoutError:
                late = RequestTimeout(f"the request body was not received within {self.timeout_s:g} s")
                raise _Refused(late) from None
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise _Refused(self.too_large(seen))
                complete = not msg.get("more_body", False)
            return msg

        async def tracking_send(msg: Message) -> None:
            nonlocal sent_start
            if msg["type"] == "http.response.start":
                sent_start = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except* _Refused as group:  # raised in the app's task groups, it may come back wrapped
            if not sent_start:
                first = group.exceptions[0]
                assert isinstance(first, _Refused)
                await refuse(send, first.problem)

    def too_large(self, n: int) -> PayloadTooLarge:
        return PayloadTooLarge(f"request body of {n}+ bytes is over the limit of {self.max_bytes} bytes")


async def refuse(send: Send, p: Problem) -> None:
    """Answer ``p`` and close the connection (the unread rest of the body is dropped)."""
    status, headers, body = problem_response_bytes(p)
    await send({"type": "http.response.start", "status": status, "headers": [*headers, (b"connection", b"close")]})
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
