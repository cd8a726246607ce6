"""GET /api/me (the caller's user, key and limits) and GET /api/usage (per day and key)."""

from __future__ import annotations

import datetime
from typing import Any

from fastapi import APIRouter, Request

from chatfleet.gateway.auth import CallerKey, GatewayDep, require_admin
from chatfleet.gateway.routes.query import bool_query, int_query
from chatfleet.gateway.schemas import usage_json
from chatfleet.gateway.workers import run_db

router = APIRouter(prefix="/api", tags=["account"])


@router.get("/me")
async def me(key: CallerKey, gw: GatewayDep) -> dict[str, Any]:
    limits = gw.limiter.limits_for(key)
    return {
        "user": key.user_name,
        "is_admin": key.is_admin,
        "key_id": key.key_id,
        "limits": {"rpm": limits.rpm, "tpm": limits.tpm, "max_streams": limits.max_streams},
    }


@router.get("/usage")
async def usage(request: Request, key: CallerKey, gw: GatewayDep) -> dict[str, Any]:
    """?days (default 30); admins may ask for every user's with ?all=true."""
    days = int_query(request, "days", 30, 1, 3660)
    everyone = bool_query(request, "all")
    if everyone:
        require_admin(key)
    since = datetime.datetime.now(datetime.UTC).date() - datetime.timedelta(days=days - 1)
    user_id = None if everyone else key.user_id
    rows = await run_db(gw.store.list_usage, since.isoformat(), user_id)
    return usage_json(rows)
