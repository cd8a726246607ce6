"""Bearer API keys -> the stored key (with its user); typed 401/403 otherwise.

Routes take the caller as a dependency: `key: CallerKey` (any valid key) or
`key: AdminKey` (an admin's), and the gateway's components as `gw: GatewayDep`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from chatfleet.gateway import keys
from chatfleet.gateway.components import Gateway
from chatfleet.gateway.store.base import ApiKey, GatewayStore
from chatfleet.gateway.workers import run_db
from chatfleet.http.http_errors import AuthenticationError, ForbiddenError


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def authenticate(store: GatewayStore, request: Request) -> ApiKey:
    """The caller's key; AuthenticationError (401) if missing, wrong or revoked."""
    token = bearer_token(request)
    if token is None:
        raise AuthenticationError(
            "You didn't provide an API key. Send it as 'Authorization: Bearer KEY'."
        )
    parsed = keys.parse_key(token)
    key = None if parsed is None else await run_db(store.get_key, parsed[0])
    if (
        parsed is None
        or key is None
        or not keys.verify_secret(parsed[1], key.salt, key.secret_hash)
    ):
        raise AuthenticationError("Incorrect API key provided.")
    if key.is_revoked:
        raise AuthenticationError("This API key has been revoked.")
    return key


def require_admin(key: ApiKey) -> None:
    if not key.is_admin:
        raise ForbiddenError("This route needs an admin key.")


def get_gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


async def caller_key(request: Request, gw: GatewayDep) -> ApiKey:
    return await authenticate(gw.store, request)


CallerKey = Annotated[ApiKey, Depends(caller_key)]


async def caller_admin_key(key: CallerKey) -> ApiKey:
    require_admin(key)
    return key


AdminKey = Annotated[ApiKey, Depends(caller_admin_key)]
