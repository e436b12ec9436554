"""How a POST body reaches its typed parameter. The route classes here check the API key, then read the
body before FastAPI validates it against the route's request model: JSON whatever the content type (a
body that is no JSON object is a 422 saying so), and, for explain, multipart/form-data with the image as
a file field, turned into the same JSON object (docs/architecture.md)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.datastructures import UploadFile
from starlette.types import Scope

from schemas.problems import ValidationProblem
from service.deps import RECEIVED, authenticate, require_key

JSON_FIELDS = ("methods", "outputs")  # a JSON array, or repeated fields (a name or a JSON object each)
INT_FIELDS = ("top_k", "target")  # digits are numbers


class ParsedRequest(Request):
    """A request whose body was read and parsed already: FastAPI gets the parsed object."""

    def __init__(self, scope: Scope, data: dict[str, Any], raw: bytes):
        super().__init__(scope)
        self._data = data
        self._raw = raw

    async def body(self) -> bytes:
        return self._raw

    async def json(self) -> Any:
        return self._data


async def json_object(request: Request) -> tuple[dict[str, Any], bytes]:
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValidationProblem(f"body is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValidationProblem("body must be a JSON object")
    return data, raw


def _form_list(current: Any, value: str) -> Any:
    v = value.strip()
    if v.startswith("["):
        return json.loads(v)
    return [*(current or []), json.loads(v) if v.startswith("{") else v]


async def form_object(request: Request) -> dict[str, Any]:
    """multipart/form-data -> the JSON object of the same request (the image file as base64)."""
    data: dict[str, Any] = {}
    async with request.form() as form:
        try:
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):  # the image; a file anywhere else fails validation
                    data[key] = base64.b64encode(await value.read()).decode() if key == "image" else value
                elif key in JSON_FIELDS:
                    data[key] = _form_list(data.get(key), value)
                elif key in INT_FIELDS and value.isdigit():
                    data[key] = int(value)
                else:
                    data[key] = value
        except json.JSONDecodeError as e:
            raise ValidationProblem(f"a form field is not valid JSON: {e}") from e
    return data


async def parsed(request: Request, accepts_form: bool) -> ParsedRequest:
    if accepts_form and request.headers.get("content-type", "").startswith("multipart/form-data"):
        data = await form_object(request)
        raw = json.dumps(data, default=repr).encode()
    else:
        data, raw = await json_object(request)
    headers = [(k, v) for k, v in request.scope["headers"] if k != b"content-type"]
    scope = {**request.scope, "headers": [*headers, (b"content-type", b"application/json")]}
    return ParsedRequest(scope, data, raw)


class JsonBodyRoute(APIRoute):
    """A route whose body is a JSON object, whatever the content type says."""

    accepts_form: ClassVar[bool] = False

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler
        accepts_form = self.accepts_form
        needs_key = any(d.dependency is require_key for d in self.dependencies)

        async def read_body_first(request: Request) -> Response:
            request.scope[RECEIVED] = time.perf_counter()
            if needs_key:
                await authenticate(request)
            return await handler(await parsed(request, accepts_form))

        return read_body_first


class JsonOrFormRoute(JsonBodyRoute):
    """A route whose body is a JSON object or the same fields as multipart/form-data."""

    accepts_form = True
