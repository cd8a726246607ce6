"""/v1/*: any OpenAI client, with a gateway key, under the key's limits and usage accounting."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import Response

from chatfleet.gateway.auth import CallerKey, GatewayDep

router = APIRouter(prefix="/v1", tags=["openai"])


@router.post("/chat/completions")
async def chat_completions(request: Request, key: CallerKey, gw: GatewayDep) -> Response:
    return await gw.proxy.forward(key, request)


@router.post("/completions")
async def completions(request: Request, key: CallerKey, gw: GatewayDep) -> Response:
    return await gw.proxy.forward(key, request)


@router.get("/models")
async def models(key: CallerKey, gw: GatewayDep) -> Response:
    """The upstream's models."""
    upstream = await gw.upstream.fetch("GET", "/v1/models", None, gw.upstream.headers())
    return Response(upstream.content, upstream.status_code, media_type="application/json")


@router.get("/models/{model_id:path}")
async def model(model_id: str, key: CallerKey, gw: GatewayDep) -> Response:
    """One of the upstream's models (its 404 for one it does not serve)."""
    path = "/v1/models/" + quote(model_id, safe="/")
    upstream = await gw.upstream.fetch("GET", path, None, gw.upstream.headers())
    return Response(upstream.content, upstream.status_code, media_type="application/json")
