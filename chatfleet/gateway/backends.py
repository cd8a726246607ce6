"""Backends: what both ways of answering (conversation replies in chat.py, the /v1 proxy in
openai_proxy.py) talk to: the store, the upstream, the limits and the token counter."""

from __future__ import annotations

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
