"""Dependencies of the routes: the gateway state, its settings, and the API-key check (declared with
FastAPI's security classes so that the spec carries the scheme; docs/architecture.md). The check also
applies the lockout after wrong keys and the client's rate limit (``service.quota``)."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from schemas.problems import Unauthorized
from schemas.settings import Settings
from service import quota
from service.keys import identity, key_is_valid
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
CHECKED = "whitebox.key-checked"  # scope key: the key check (and the rate limit) ran for this request


def keys_configured(settings: Settings) -> bool:
    return bool(settings.api_keys or settings.api_key_hashes)


async def check_key(request: Request, token: HTTPAuthorizationCredentials | None, header: str | None) -> None:
    """With API keys configured (plain or hashed), the request carries one (bearer token, else X-API-Key):
    401 otherwise, 429 while its address is locked out after too many wrong keys. Then the client (the
    key's hash, or the address without keys) takes a token of its rate limit."""
    if request.scope.get(CHECKED):  # a body route checked it before reading the body
        return
    gw = get_gateway(request)
    settings = gw.settings
    if keys_configured(settings):
        address = quota.client_address(request)
        await quota.check_lockout(gw, address)
        given = token.credentials if token is not None else header or ""
        if not key_is_valid(given, settings.api_keys, settings.api_key_hashes):
            await quota.note_failure(gw, address)
            raise Unauthorized(
                "missing or invalid API key (Authorization: Bearer <key> or X-API-Key)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        request.scope[quota.CLIENT] = "key-" + identity(given)
    await quota.take_token(gw, request)
    request.scope[CHECKED] = True


async def require_key(
    request: Request,
    token: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
    header: Annotated[str | None, Security(api_key_header)],
) -> None:
    await check_key(request, token, header)


async def authenticate(request: Request) -> None:
    """:func:`require_key` for the body routes (``service.bodies``), which check the key before
    they read the body: an unauthenticated upload is refused unread."""
    await check_key(request, await bearer(request), await api_key_header(request))


AUTH = [Depends(require_key)]
RECEIVED = "whitebox.received"  # scope key: perf_counter() when the route began to read the request


def received_at(request: Request) -> float:
    """When the request reached its route (``service.bodies`` notes it before reading the body)."""
    t = request.scope.get(RECEIVED)
    return float(t) if t is not None else time.perf_counter()


ReceivedAt = Annotated[float, Depends(received_at)]
