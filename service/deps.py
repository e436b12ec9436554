"""Dependencies of the routes: the gateway state, its settings, and the API-key check (declared with
FastAPI's security classes so that the spec carries the scheme; docs/architecture.md)."""

from __future__ import annotations

import hmac
import time
from collections.abc import Iterable
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from schemas.problems import Unauthorized
from schemas.settings import Settings
from service.state import Gateway

bearer = HTTPBearer(auto_error=False, description="an API key as a bearer token: `Authorization: Bearer <key>`")
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key in `X-API-Key`")


def get_gateway(request: Request) -> Gateway:
    gw = request.app.state.gateway
    assert isinstance(gw, Gateway)
    return gw


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


def get_settings(gw: GatewayDep) -> Settings:
    return gw.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def key_is_valid(given: str, keys: Iterable[str]) -> bool:
    """``given`` equals one of ``keys``; every key is compared, each in constant time."""
    found = False
    for key in keys:
        found |= hmac.compare_digest(given.encode(), key.encode())
    return found


def check_key(settings: Settings, token: HTTPAuthorizationCredentials | None, header: str | None) -> None:
    """With API keys configured, the request carries one (bearer token, else X-API-Key); 401 otherwise."""
    if not settings.api_keys:
        return
    given = token.credentials if token is not None else header or ""
    if not key_is_valid(given, settings.api_keys):
        raise Unauthorized(
            "missing or invalid API key (Authorization: Bearer <key> or X-API-Key)",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def require_key(
    settings: SettingsDep,
    token: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
    header: Annotated[str | None, Security(api_key_header)],
) -> None:
    check_key(settings, token, header)


async def authenticate(request: Request) -> None:
    """:func:`require_key` for the body routes (``service.bodies``), which check the key before
    they read the body: an unauthenticated upload is refused unread."""
    check_key(get_gateway(request).settings, await bearer(request), await api_key_header(request))


AUTH = [Depends(require_key)]
RECEIVED = "whitebox.received"  # scope key: perf_counter() when the route began to read the request


def received_at(request: Request) -> float:
    """When the request reached its route (``service.bodies`` notes it before reading the body)."""
    t = request.scope.get(RECEIVED)
    return float(t) if t is not None else time.perf_counter()


ReceivedAt = Annotated[float, Depends(received_at)]
