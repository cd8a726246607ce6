"""The httpx client a proxy (router, gateway) uses to reach its upstreams: one per process,
pooled connections, a connect timeout separate from the longest silence allowed."""

from __future__ import annotations

import httpx


def make_async_client(
    connect_timeout_s: float,
    read_timeout_s: float,
    max_connections: int,
    max_keepalive_connections: int,
    api_key: str | None = None,
) -> httpx.AsyncClient:
    """`read_timeout_s` bounds every wait for bytes, the first byte included; `api_key` goes
    as Bearer on every request (upstreams that demand one)."""
    timeout = httpx.Timeout(read_timeout_s, connect=connect_timeout_s)
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_keepalive_connections
    )
    headers = {"authorization": f"Bearer {api_key}"} if api_key else None
    return httpx.AsyncClient(timeout=timeout, limits=limits, headers=headers)
