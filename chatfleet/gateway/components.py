"""Gateway: every component the routes use, built once (entrypoints/gateway_cmd.py), and the
helpers routes share: reading a body, finding the caller's conversation."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel

from chatfleet.config.gateway_config import GatewayConfig
from chatfleet.gateway.backends import Backends
from chatfleet.gateway.chat import ChatService
from chatfleet.gateway.limiter import Limiter
from chatfleet.gateway.limits import RateLimitStore
from chatfleet.gateway.openai_proxy import OpenAIProxy
from chatfleet.gateway.prompt import TokenCounter
from chatfleet.gateway.store.base import ApiKey, Conversation, GatewayStore
from chatfleet.gateway.upstream import Upstream
from chatfleet.gateway.workers import run_db
from chatfleet.http.body import parse_json, parse_model, read_body
from chatfleet.http.http_errors import NotFoundError

logger = logging.getLogger("chatfleet.gateway")
ModelT = TypeVar("ModelT", bound=BaseModel)


@dataclass
class Gateway:
    config: GatewayConfig
    store: GatewayStore
    limits: RateLimitStore
    upstream: Upstream
    counter: TokenCounter

    def __post_init__(self) -> None:
        self.limiter = Limiter(self.limits, self.config.limits)
        backends = Backends(
            self.store, self.upstream, self.limiter, self.counter, self.config.cache_isolation
        )
        self.chat = ChatService(backends, self.config.chat)
        self.proxy = OpenAIProxy(backends, self.config)

    async def sweep_stale_replies(self) -> None:
        """Forever: store "incomplete" for replies whose gateway died mid-stream."""
        stale = self.config.chat.stale_after_s
        while True:
            try:
                n = await run_db(self.store.expire_stale_replies, time.time() - stale)
                if n:
                    logger.warning("marked %d interrupted replies incomplete", n)
            except Exception as e:
                logger.warning("sweeping stale replies failed: %r", e)
            await asyncio.sleep(stale / 2)

    async def close(self) -> None:
        await self.upstream.close()
        await self.limits.close()
        await run_db(self.store.close)

    async def body(self, request: Request, model: type[ModelT]) -> ModelT:
        """The JSON body validated by `model` (an empty body counts as {}); 400/413."""
        raw = await read_body(request, self.config.max_body_bytes, self.config.http.body_timeout_s)
        value: Any = parse_json(raw, self.config.max_json_depth) if raw.strip() else {}
        return parse_model(model, value)

    async def conversation(self, key: ApiKey, conversation_id: str) -> Conversation:
        """The caller's conversation; 404 if it does not exist or is someone else's."""
        conv = await run_db(self.store.get_conversation, conversation_id)
        if conv is None or conv.user_id != key.user_id:
            raise NotFoundError(f"No conversation {conversation_id!r}.", param="id")
        return conv
