"""The rate-limit store interface, and GCRA as a pure function both backends follow.

GCRA (the generic cell rate algorithm) keeps one number per bucket: the theoretical arrival
time `tat`. A limit of `limit` units per `period_s` spaces units `interval = period_s / limit`
apart and allows a burst of the whole period:

    now            tat             new_tat = max(tat, now) + cost * interval
     |--------------|-----------------|
     '------ must be <= period_s -----'      else retry after (new_tat - now - period_s)

A full bucket is `tat <= now`. Refunds move `tat` back (never before `now`); charges after the
fact move it forward, past `now + period_s` if need be (a debt later requests wait out).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

PERIOD_S = 60.0  # requests and tokens are both limited per minute


@dataclass(frozen=True)
class KeyLimits:
    rpm: int  # requests per minute
    tpm: int  # tokens (prompt + max_tokens reserved, then settled) per minute
    max_streams: int  # concurrent streams


@dataclass(frozen=True)
class GcraStep:
    is_allowed: bool
    tat: float  # the bucket's tat after the step (unchanged when refused)
    retry_after_s: float  # 0 when allowed


def gcra(tat: float | None, now: float, limit: int, cost: int) -> GcraStep:
    """Take `cost` units from a bucket of `limit` per PERIOD_S whose state is `tat`."""
    interval = PERIOD_S / limit
    new_tat = max(tat if tat is not None else now, now) + cost * interval
    over = new_tat - now - PERIOD_S
    if over > 1e-9:
        return GcraStep(False, tat if tat is not None else now, over)
    return GcraStep(True, new_tat, 0.0)


def gcra_adjust(tat: float | None, now: float, limit: int, delta: int) -> float:
    """The bucket's tat after giving back (delta < 0) or charging (delta > 0) units."""
    base = max(tat if tat is not None else now, now)
    return max(base + delta * PERIOD_S / limit, now)


def remaining(tat: float, now: float, limit: int) -> int:
    """Units a request could take right now."""
    return max(0, math.floor((PERIOD_S - max(tat - now, 0.0)) * limit / PERIOD_S + 1e-9))


@dataclass(frozen=True)
class LimitDecision:
    """The outcome of `acquire`, with what the x-ratelimit-* headers report."""

    is_allowed: bool
    refused: str | None  # "requests" or "tokens" when refused
    retry_after_s: float
    remaining_requests: int
    remaining_tokens: int
    reset_requests_s: float  # until the request bucket is full again
    reset_tokens_s: float


class RateLimitStore(ABC):
    """Per-key buckets for requests and tokens, and leased slots for concurrent streams.

    Every method is atomic for one key, across every process that shares the store.
    """

    name: str = "base"

    @abstractmethod
    async def acquire(
        self, key_id: str, limits: KeyLimits, num_tokens: int, num_requests: int = 1
    ) -> LimitDecision:
        """Take `num_requests` requests and `num_tokens` tokens, or (refused) nothing."""

    @abstractmethod
    async def peek(self, key_id: str, limits: KeyLimits) -> LimitDecision:
        """Whether one request (and no tokens) would be taken now; takes nothing."""

    @abstractmethod
    async def adjust_tokens(self, key_id: str, limits: KeyLimits, delta: int) -> None:
        """Give back (delta < 0) the unused part of a reservation, or charge more (> 0)."""

    @abstractmethod
    async def acquire_stream(
        self, key_id: str, stream_id: str, max_streams: int, lease_s: float
    ) -> bool:
        """Take a stream slot for `lease_s` seconds; False if `max_streams` are held."""

    @abstractmethod
    async def renew_stream(self, key_id: str, stream_id: str, lease_s: float) -> None:
        """Extend a held slot's lease (a no-op if it has lapsed)."""

    @abstractmethod
    async def release_stream(self, key_id: str, stream_id: str) -> None: ...

    async def close(self) -> None:
        return None


def decision(
    now: float, limits: KeyLimits, req: GcraStep, tok: GcraStep, refused: str | None
) -> LimitDecision:
    """Assemble a LimitDecision from the two buckets' steps (both backends use this)."""
    return LimitDecision(
        is_allowed=refused is None,
        refused=refused,
        retry_after_s=max(req.retry_after_s, tok.retry_after_s),
        remaining_requests=remaining(req.tat, now, limits.rpm),
        remaining_tokens=remaining(tok.tat, now, limits.tpm),
        reset_requests_s=max(req.tat - now, 0.0),
        reset_tokens_s=max(tok.tat - now, 0.0),
    )


def refused_kind(req: GcraStep, tok: GcraStep) -> str | None:
    if req.is_allowed and tok.is_allowed:
        return None
    if not tok.is_allowed and tok.retry_after_s >= req.retry_after_s:
        return "tokens"
    return "requests"
