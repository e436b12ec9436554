"""Every error answer of the gateway is application/problem+json (RFC 9457, ``schemas.problems``): the
rendering of a :class:`Problem` and the exception handlers that turn validation errors, HTTP errors
and unexpected exceptions into one (docs/architecture.md)."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from redis import exceptions as redis_errors
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from schemas.problems import Problem, Unavailable, ValidationProblem

log = logging.getLogger("whitebox.gateway")
PROBLEM_JSON = "application/problem+json"
M = TypeVar("M", bound=BaseModel)


# what an answer never shows: heap addresses (a repr's "at 0x7f..."), and source file paths of a traceback
_INTERNALS = re.compile(r" at 0x[0-9a-fA-F]{4,}|(?:[A-Za-z]:)?(?:[/\\][\w.-]+)+\.py\b(?:\W+line \d+)?")


def scrub(body: dict[str, Any]) -> dict[str, Any]:
    """A problem body with heap addresses and source paths cut out of its detail and error messages."""
    out = {**body, "detail": _INTERNALS.sub("", str(body.get("detail", "")))}
    if isinstance(body.get("errors"), list):
        out["errors"] = [
            {**e, "msg": _INTERNALS.sub("", str(e.get("msg", "")))} if isinstance(e, dict) else e
            for e in body["errors"]
        ]
    return out


def problem_response(p: Problem) -> JSONResponse:
    return JSONResponse(scrub(p.problem()), status_code=p.status, media_type=PROBLEM_JSON, headers=p.headers or None)


def clean_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """pydantic errors without the (possibly huge) input values."""
    return [
        {"loc": [str(x) for x in e.get("loc", ())], "msg": e.get("msg", ""), "type": e.get("type", "")} for e in errors
    ]


def validation_problem(e: ValidationError | RequestValidationError, prefix: tuple[str, ...] = ()) -> ValidationProblem:
    errs = clean_errors(e.errors())
    for err in errs:
        err["loc"] = [*prefix, *err["loc"]]
    detail = "; ".join(f"{'.'.join(x['loc'])}: {x['msg']}" for x in errs[:5])
    return ValidationProblem(detail or "invalid request", errors=errs)


async def on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return problem_response(exc)


async def on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return problem_response(validation_problem(exc))


def allowed_methods(request: Request) -> str:
    """The methods of every route whose path matches the request's (a 405's Allow, RFC 9110)."""
    methods: set[str] = set()
    scope = {**request.scope, "method": "\0"}  # a method no route has: a path match is PARTIAL
    routes = list(request.app.router.routes)
    while routes:
        route = routes.pop()
        included = getattr(route, "original_router", None)  # FastAPI's included routers (no prefixes here)
        if included is not None:
            routes.extend(included.routes)
        elif route.matches(scope)[0] is Match.PARTIAL:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:  # Starlette names the methods of the first route only
        headers["Allow"] = allowed_methods(request) or headers.get("Allow", "")
    p = Problem(str(exc.detail), headers=headers)
    p.status, p.title, p.slug = exc.status_code, str(exc.detail), "http-" + str(exc.status_code)
    return problem_response(p)


async def on_redis_down(request: Request, exc: Exception) -> Response:
    """Redis unreachable (refused, timed out, loading) or full (at maxmemory with nothing left to evict):
    503 + Retry-After, never a 500 or a traceback."""
    log.warning("Redis unreachable: %s", type(exc).__name__)
    retry = request.app.state.gateway.settings.retry_after_s
    state = "is full" if isinstance(exc, redis_errors.OutOfMemoryError) else "is unreachable"
    return problem_response(
        Unavailable(f"the job queue (Redis) {state}; retry later", headers={"Retry-After": str(retry)})
    )


async def on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error")
    return problem_response(Problem(f"internal error: {type(exc).__name__}"))


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    for exc in (redis_errors.ConnectionError, redis_errors.TimeoutError, redis_errors.OutOfMemoryError):
        app.add_exception_handler(exc, on_redis_down)
    app.add_exception_handler(Exception, on_unexpected)


def validated(model_cls: type[M], data: dict[str, Any], prefix: tuple[str, ...] = ("body",)) -> M:
    """``data`` as ``model_cls``; a 422 whose error locations start with ``prefix`` otherwise."""
    try:
        return model_cls.model_validate(data)
    except ValidationError as e:
        raise validation_problem(e, prefix) from e
