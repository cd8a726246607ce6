"""/api/keys: a caller lists and revokes its own keys; admins list all and create keys."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from chatfleet.gateway.auth import AdminKey, CallerKey, GatewayDep
from chatfleet.gateway.routes.query import bool_query
from chatfleet.gateway.schemas import NewKey, key_json
from chatfleet.gateway.workers import run_db
from chatfleet.http.http_errors import NotFoundError

router = APIRouter(prefix="/api/keys", tags=["keys"])


@router.get("")
async def list_keys(request: Request, key: CallerKey, gw: GatewayDep) -> dict[str, Any]:
    everyone = key.is_admin and bool_query(request, "all")
    keys = await run_db(gw.store.list_keys, None if everyone else key.user_id)
    return {"object": "list", "data": [key_json(k) for k in keys]}


@router.post("", status_code=201)
async def create_key(request: Request, key: AdminKey, gw: GatewayDep) -> dict[str, Any]:
    """The new key, its secret shown this once; its user is made if it does not exist."""
    req = await gw.body(request, NewKey)
    user = await run_db(gw.store.get_user_by_name, req.user)
    if user is None:
        user = await run_db(gw.store.create_user, req.user)
    made, plain = await run_db(
        gw.store.create_key, user.user_id, req.name, req.rpm, req.tpm, req.max_streams
    )
    return key_json(made) | {"key": plain}


@router.delete("/{key_id}")
async def revoke_key(key_id: str, key: CallerKey, gw: GatewayDep) -> dict[str, Any]:
    target = await run_db(gw.store.get_key, key_id)
    if target is None or (target.user_id != key.user_id and not key.is_admin):
        raise NotFoundError(f"No key {key_id!r}.", param="id")
    await run_db(gw.store.revoke_key, key_id)
    return {"id": key_id, "object": "api_key.revoked", "revoked": True}
