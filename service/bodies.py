"""How a POST body reaches its typed parameter. The route classes here check the API key, then read the
body before FastAPI validates it against the route's request model: JSON whatever the content type (a
body that is no JSON object is a 422 saying so), and, for explain, multipart/form-data with the image as
a file field, turned into the same JSON object (docs/architecture.md). JSON nesting is bounded by
``max_json_depth`` (measured before parsing, without recursion), and the form's fields and files by
count."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.types import Scope

from schemas.api import is_index
from schemas.problems import ValidationProblem
from service.deps import RECEIVED, authenticate, get_gateway, require_key

OFF_LOOP_BYTES = 256 * 1024  # bodies larger than this are parsed off the event loop
JSON_FIELDS = ("methods", "outputs")  # a JSON array, or repeated fields (a name or a JSON object each)
INT_FIELDS = ("top_k", "target", "frame")  # digits are numbers
FLOAT_FIELDS = ("opacity", "threshold", "window_center", "window_width")  # a number's text is the number
BOOL_FIELDS = {"true": True, "on": True, "1": True, "yes": True, "false": False, "off": False, "0": False, "no": False}
BOOL_NAMES = ("colorbar", "contour")
TYPED_FIELDS = (*FLOAT_FIELDS, *BOOL_NAMES, "frame")  # a blank one is left out (the default)
MAX_FORM_FIELDS, MAX_FORM_FILES = 64, 1
# a JSON string (skipped whole, escapes included) or a bracket: what nesting depth is counted from
_JSON_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
_OPENING = frozenset(b"[{")


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


def json_depth(raw: bytes, limit: int) -> int:
    """The nesting depth of a JSON text (brackets inside strings aside), or a bound of it when that is at
    most ``limit``; counted up to ``limit + 1``."""
    opening = raw.count(b"[") + raw.count(b"{")
    if opening <= limit:  # the common case, at memchr speed: too few brackets to nest deeper
        return opening
    depth = deepest = 0
    for m in _JSON_TOKENS.finditer(raw):
        c = raw[m.start()]
        if c in _OPENING:
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                break
        elif c != 0x22:  # a closing bracket; 0x22 is a string
            depth -= 1
    return deepest


def loads_bounded(raw: bytes | str, limit: int, what: str = "body") -> Any:
    """``json.loads`` of a text nested at most ``limit`` deep (a 422 saying so otherwise)."""
    data = raw.encode() if isinstance(raw, str) else raw
    if json_depth(data, limit) > limit:
        raise ValidationProblem(f"{what}: JSON nested deeper than {limit} levels")
    return json.loads(data)


async def json_object(request: Request) -> tuple[dict[str, Any], bytes]:
    raw = await request.body()
    depth = get_gateway(request).settings.max_json_depth
    try:
        # a large body (an image of several MB) is parsed in a thread: the event loop keeps answering
        if len(raw) > OFF_LOOP_BYTES:
            data = await asyncio.to_thread(loads_bounded, raw, depth)
        else:
            data = loads_bounded(raw, depth)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValidationProblem(f"body is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValidationProblem("body must be a JSON object")
    return data, raw


def _form_list(current: Any, value: str, limit: int, key: str) -> Any:
    v = value.strip()
    if v.startswith("["):
        return loads_bounded(v, limit, key)
    return [*(current or []), loads_bounded(v, limit, key) if v.startswith("{") else v]


async def form_object(request: Request) -> dict[str, Any]:
    """multipart/form-data -> the JSON object of the same request (the image file as base64)."""
    limit = get_gateway(request).settings.max_json_depth
    try:
        async with request.form(max_files=MAX_FORM_FILES, max_fields=MAX_FORM_FIELDS) as form:
            return await _form_fields(form.multi_items(), limit)
    except HTTPException as e:  # Starlette's multipart errors: too many parts, a malformed body
        raise ValidationProblem(f"invalid multipart form: {e.detail}") from None


async def _form_fields(items: list[tuple[str, str | UploadFile]], limit: int) -> dict[str, Any]:
    data: dict[str, Any] = {}
    try:
        for key, value in items:
            if isinstance(value, UploadFile):  # the image; a file anywhere else fails validation
                data[key] = base64.b64encode(await value.read()).decode() if key == "image" else value
            elif key in JSON_FIELDS:
                data[key] = _form_list(data.get(key), value, limit, key)
            elif key in TYPED_FIELDS and not value.strip():
                data.pop(key, None)
            elif key in INT_FIELDS and is_index(value.strip()):
                data[key] = int(value.strip())
            else:
                data[key] = _typed(key, value)
    except json.JSONDecodeError as e:
        raise ValidationProblem(f"a form field is not valid JSON: {e}") from e
    return data


def _typed(key: str, value: str) -> Any:
    """A float or boolean field's form text as its value; text that is none stays text, for the request
    model to refuse naming the field."""
    v = value.strip()
    if key in FLOAT_FIELDS:
        try:
            return float(v)
        except ValueError:
            return value
    if key in BOOL_NAMES:
        return BOOL_FIELDS.get(v.lower(), value)
    return value


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
