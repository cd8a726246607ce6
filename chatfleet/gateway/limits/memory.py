"""In-process rate-limit store: the default for one gateway process."""

from __future__ import annotations

import time
from dataclasses import replace

from chatfleet.gateway.limits.base import (
    KeyLimits,
    LimitDecision,
    RateLimitStore,
    decision,
    gcra,
    gcra_adjust,
    refused_kind,
)


class MemoryRateLimitStore(RateLimitStore):
    """Buckets and stream leases in dicts. NOTE: the methods never await, so each one is
    atomic on the event loop without a lock."""

    name = "memory"

    def __init__(self) -> None:
        self._request_tat: dict[str, float] = {}
        self._token_tat: dict[str, float] = {}
        self._streams: dict[str, dict[str, float]] = {}  # key_id -> stream_id -> lease end

    async def acquire(
        self, key_id: str, limits: KeyLimits, num_tokens: int, num_requests: int = 1
    ) -> LimitDecision:
        return self._take(key_id, limits, num_tokens, num_requests, commit=True)

    async def peek(self, key_id: str, limits: KeyLimits) -> LimitDecision:
        return self._take(key_id, limits, 0, 1, commit=False)

    def _take(
        self, key_id: str, limits: KeyLimits, num_tokens: int, num_requests: int, commit: bool
    ) -> LimitDecision:
        now = time.monotonic()
        old_req, old_tok = self._request_tat.get(key_id), self._token_tat.get(key_id)
        req = gcra(old_req, now, limits.rpm, num_requests)
        tok = gcra(old_tok, now, limits.tpm, num_tokens)
        refused = refused_kind(req, tok)
        if refused is None and commit:
            self._request_tat[key_id] = req.tat
            self._token_tat[key_id] = tok.tat
        else:  # nothing was taken: report the buckets as they are
            req = replace(req, tat=now if old_req is None else old_req)
            tok = replace(tok, tat=now if old_tok is None else old_tok)
        return decision(now, limits, req, tok, refused)

    async def adjust_tokens(self, key_id: str, limits: KeyLimits, delta: int) -> None:
        now = time.monotonic()
        self._token_tat[key_id] = gcra_adjust(self._token_tat.get(key_id), now, limits.tpm, delta)

    async def acquire_stream(
        self, key_id: str, stream_id: str, max_streams: int, lease_s: float
    ) -> bool:
        now = time.monotonic()
        held = {s: end for s, end in self._streams.get(key_id, {}).items() if end > now}
        self._streams[key_id] = held
        if len(held) >= max_streams:
            return False
        held[stream_id] = now + lease_s
        return True

    async def renew_stream(self, key_id: str, stream_id: str, lease_s: float) -> None:
        held = self._streams.get(key_id, {})
        if stream_id in held:
            held[stream_id] = time.monotonic() + lease_s

    async def release_stream(self, key_id: str, stream_id: str) -> None:
        held = self._streams.get(key_id)
        if held is not None:
            held.pop(stream_id, None)
            if not held:
                del self._streams[key_id]
