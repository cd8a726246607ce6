"""Backends: what both ways of answering (conversation replies in chat.py, the /v1 proxy in
openai_proxy.py) talk to: the store, the upstream, the limits and the token counter; and the
cache salt every request upstream carries."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from chatfleet.gateway.limiter import Limiter
from chatfleet.gateway.prompt import TokenCounter
from chatfleet.gateway.store.base import GatewayStore
from chatfleet.gateway.upstream import Upstream


@dataclass(frozen=True)
class Backends:
    store: GatewayStore
    upstream: Upstream
    limiter: Limiter
    counter: TokenCounter
    cache_isolation: str = "user"

    def cache_salt(self, user_id: str) -> str | None:
        """The salt of `user_id`'s requests: theirs alone ("user"), or none ("shared").
        Always set by the gateway, never taken from the client's body."""
        if self.cache_isolation == "shared":
            return None
        return hashlib.sha256(f"chatfleet-cache-salt:{user_id}".encode()).hexdigest()[:32]
