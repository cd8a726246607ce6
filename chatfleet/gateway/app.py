"""The gateway's HTTP app. Routes are thin: authenticate, validate, call a service.

GET  /                                      the web chat page (static, no CDN)
GET  /health                                200 while the process runs
GET  /api/me                                the caller's user, key and limits
GET  /api/conversations                     the caller's, most recent first (?limit, ?before)
POST /api/conversations                     {title?, system_prompt?}
GET  /api/conversations/{id}                with its messages
PATCH/DELETE /api/conversations/{id}        rename {title} / delete with its messages
POST /api/conversations/{id}/messages       {content, max_tokens?, temperature?, top_p?, seed?}
POST /api/conversations/{id}/regenerate     the last reply again (same options)
GET  /api/usage                             per day and key (?days; admins: ?all=true)
GET/POST /api/keys, DELETE /api/keys/{id}   list own keys / create (admin) / revoke
POST /v1/chat/completions, /v1/completions  OpenAI API with the same keys and limits
GET  /v1/models                             the upstream's models
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

from chatfleet.errors import InvalidRequestError
from chatfleet.gateway.auth import authenticate, require_admin
from chatfleet.gateway.chat import ChatService, run_sync
from chatfleet.gateway.config import GatewayConfig
from chatfleet.gateway.errors import NotFoundError
from chatfleet.gateway.limiter import Limiter
from chatfleet.gateway.limits import RateLimitStore
from chatfleet.gateway.prompt import TokenCounter
from chatfleet.gateway.proxy import OpenAIProxy
from chatfleet.gateway.schemas import (
    NewConversation,
    NewKey,
    NewMessage,
    ReplyOptions,
    UpdateConversation,
    conversation_json,
    key_json,
    message_json,
    usage_json,
)
from chatfleet.gateway.store.base import ApiKey, Conversation, GatewayStore
from chatfleet.gateway.upstream import Upstream
from chatfleet.server.body import parse_json, read_body
from chatfleet.server.handlers import install_error_handlers
from chatfleet.server.serving import parse

logger = logging.getLogger("chatfleet.gateway")
STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")
# The page runs only its own scripts: model output that slips past the sanitizer still
# cannot execute (no inline script, no eval, no foreign origin).
PAGE_HEADERS = {
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


@dataclass
class Gateway:
    """Every component the routes use, built once (see entrypoints/gateway.py)."""

    config: GatewayConfig
    store: GatewayStore
    limits: RateLimitStore
    upstream: Upstream
    counter: TokenCounter

    def __post_init__(self) -> None:
        self.limiter = Limiter(self.limits, self.config.limits)
        self.chat = ChatService(
            self.store, self.upstream, self.limiter, self.counter, self.config.chat
        )
        self.proxy = OpenAIProxy(self.store, self.upstream, self.limiter, self.counter, self.config)

    async def sweep_stale_replies(self) -> None:
        """Forever: store "incomplete" for replies whose gateway died mid-stream."""
        stale = self.config.chat.stale_after_s
        while True:
            try:
                n = await run_sync(self.store.expire_stale_replies, time.time() - stale)
                if n:
                    logger.warning("marked %d interrupted replies incomplete", n)
            except Exception as e:
                logger.warning("sweeping stale replies failed: %r", e)
            await asyncio.sleep(stale / 2)

    async def body(self, request: Request, model: type) -> Any:
        """The JSON body validated by `model` (an empty body counts as {}); 400/413."""
        raw = await read_body(request, self.config.max_body_bytes)
        return parse(model, parse_json(raw, self.config.max_json_depth) if raw.strip() else {})

    async def conversation(self, key: ApiKey, conversation_id: str) -> Conversation:
        """The caller's conversation; 404 if it does not exist or is someone else's."""
        conv = await run_sync(self.store.get_conversation, conversation_id)
        if conv is None or conv.user_id != key.user_id:
            raise NotFoundError(f"No conversation {conversation_id!r}.", param="id")
        return conv


def _int_query(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not lo <= int(raw) <= hi:
        raise InvalidRequestError(f"{name} must be an integer in [{lo}, {hi}]", param=name)
    return int(raw)


def build_gateway_app(gw: Gateway) -> FastAPI:
    """The app; its lifespan starts the upstream client and the sweeper and closes
    everything (store and limit store included) on shutdown."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await gw.upstream.start()
        sweeper = asyncio.create_task(gw.sweep_stale_replies())
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            await gw.upstream.close()
            await gw.limits.close()
            await run_sync(gw.store.close)

    app = FastAPI(title="chatfleet gateway", version="0.1.0", lifespan=lifespan)
    app.state.gateway = gw
    stale = gw.config.chat.stale_after_s

    install_error_handlers(app, logger)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return FileResponse(os.path.join(STATIC_DIR, "index.html"), headers=PAGE_HEADERS)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/me")
    async def me(request: Request) -> dict[str, Any]:
        key = await authenticate(gw.store, request)
        limits = gw.limiter.limits_for(key)
        return {
            "user": key.user_name,
            "is_admin": key.is_admin,
            "key_id": key.key_id,
            "limits": {"rpm": limits.rpm, "tpm": limits.tpm, "max_streams": limits.max_streams},
        }

    @app.get("/api/conversations")
    async def list_conversations(request: Request) -> dict[str, Any]:
        key = await authenticate(gw.store, request)
        limit = _int_query(request, "limit", 50, 1, 200)
        before = request.query_params.get("before")
        try:
            cursor = None if before is None else float(before)
        except ValueError:
            raise InvalidRequestError("before must be a number", param="before") from None
        convs = await run_sync(gw.store.list_conversations, key.user_id, limit + 1, cursor)
        data = [conversation_json(c) for c in convs[:limit]]
        return {"object": "list", "data": data, "has_more": len(convs) > limit}

    @app.post("/api/conversations", status_code=201)
    async def create_conversation(request: Request) -> dict[str, Any]:
        key = await authenticate(gw.store, request)
        req: NewConversation = await gw.body(request, NewConversation)
        conv = await run_sync(
            gw.store.create_conversation, key.user_id, req.title, req.system_prompt
        )
        return conversation_json(conv)

    @app.get("/api/conversations/{conversation_id}")
    async def get_conversation(request: Request, conversation_id: str) -> dict[str, Any]:
        key = await authenticate(gw.store, request)
        conv = await gw.conversation(key, conversation_id)
        messages = await run_sync(gw.store.list_messages, conversation_id)
        return conversation_json(conv) | {"messages": [message_json(m, stale) for m in messages]}

    @app.patch("/api/conversations/{conversation_id}")
    async def rename_conversation(request: Request, conversation_id: str) -> dict[str, Any]:
        key = await authenticate(gw.store, request)
        await gw.conversation(key, conversation_id)
        req: UpdateConversation = await gw.body(request, UpdateConversation)
        conv = await run_sync(gw.store.update_conversation, conversation_id, title=req.title)
        if conv is None:
            raise NotFoundError(f"No conversation {conversation_id!r}.", param="id")
        return conversation_json(conv)

    @app.delete("/api/conversations/{conversation_id}")
    async def delete_conversation(request: Request, conversation_id: str) -> dict[str, Any]:
        key = await authenticate(gw.store, request)
        await gw.conversation(key, conversation_id)
        await run_sync(gw.store.delete_conversation, conversation_id)
        return {"id": conversation_id, "object": "conversation.deleted", "deleted": True}

    @app.post("/api/conversations/{conversation_id}/messages")
    async def post_message(request: Request, conversation_id: str) -> Response:
        key = await authenticate(gw.store, request)
        conv = await gw.conversation(key, conversation_id)
        req: NewMessage = await gw.body(request, NewMessage)
        return await gw.chat.reply(key, conv, req, req.content)

    @app.post("/api/conversations/{conversation_id}/regenerate")
    async def regenerate(request: Request, conversation_id: str) -> Response:
        key = await authenticate(gw.store, request)
        conv = await gw.conversation(key, conversation_id)
        opts: ReplyOptions = await gw.body(request, ReplyOptions)
        return await gw.chat.reply(key, conv, opts, None)

    @app.get("/api/usage")
    async def usage(request: Request) -> dict[str, Any]:
        key = await authenticate(gw.store, request)
        days = _int_query(request, "days", 30, 1, 3660)
        everyone = request.query_params.get("all", "").lower() in ("1", "true")
        if everyone:
            require_admin(key)
        since = datetime.datetime.now(datetime.UTC).date() - datetime.timedelta(days=days - 1)
        rows = await run_sync(
            gw.store.list_usage, since.isoformat(), None if everyone else key.user_id
        )
        return usage_json(rows)

    @app.get("/api/keys")
    async def list_keys(request: Request) -> dict[str, Any]:
        key = await authenticate(gw.store, request)
        everyone = key.is_admin and request.query_params.get("all", "").lower() in ("1", "true")
        keys = await run_sync(gw.store.list_keys, None if everyone else key.user_id)
        return {"object": "list", "data": [key_json(k) for k in keys]}

    @app.post("/api/keys", status_code=201)
    async def create_key(request: Request) -> dict[str, Any]:
        key = await authenticate(gw.store, request)
        require_admin(key)
        req: NewKey = await gw.body(request, NewKey)
        user = await run_sync(gw.store.get_user_by_name, req.user)
        if user is None:
            user = await run_sync(gw.store.create_user, req.user)
        made, plain = await run_sync(
            gw.store.create_key, user.user_id, req.name, req.rpm, req.tpm, req.max_streams
        )
        return key_json(made) | {"key": plain}

    @app.delete("/api/keys/{key_id}")
    async def revoke_key(request: Request, key_id: str) -> dict[str, Any]:
        key = await authenticate(gw.store, request)
        target = await run_sync(gw.store.get_key, key_id)
        if target is None or (target.user_id != key.user_id and not key.is_admin):
            raise NotFoundError(f"No key {key_id!r}.", param="id")
        await run_sync(gw.store.revoke_key, key_id)
        return {"id": key_id, "object": "api_key.revoked", "revoked": True}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await gw.proxy.forward(await authenticate(gw.store, request), request)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await gw.proxy.forward(await authenticate(gw.store, request), request)

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        await authenticate(gw.store, request)
        response = await gw.upstream.open("GET", "/v1/models", None, gw.upstream.headers())
        try:
            content = await response.aread()
        finally:
            await response.aclose()
        return Response(content, response.status_code, media_type="application/json")

    return app
