"""Per-request admission against a key's limits: one request, a token reservation up front
(prompt + max_tokens), a stream slot for each /v1 request and reply (its lease renewed while
the request runs); settled with the exact usage afterwards.

    admit() --reserve--> Admission --settle(used)--> refund (reserved - used), or charge more
                                   --release()-----> stream slot back, unsettled reservation
                                                     refunded in full
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
from collections.abc import Awaitable

from chatfleet.config.gateway_config import LimitsConfig
from chatfleet.gateway.limits import KeyLimits, LimitDecision, RateLimitStore
from chatfleet.gateway.store.base import ApiKey
from chatfleet.http.http_errors import HTTPError, OverloadedError

logger = logging.getLogger("chatfleet.gateway")


class RateLimitError(HTTPError):
    """A per-key limit refused the request: 429 with Retry-After and x-ratelimit-* headers.

    `type` says which limit, as OpenAI does: "requests", "tokens" or "streams".
    """

    status_code, code = 429, "rate_limit_exceeded"

    def __init__(self, message: str, kind: str, headers: dict[str, str]) -> None:
        super().__init__(message)
        self.type = kind
        self.headers = headers


class LimitsUnavailableError(OverloadedError):
    """The rate-limit store (Redis) cannot be reached: nobody's limits can be checked, so
    nothing is admitted; 503 with Retry-After, never a 500."""

    code = "limits_unavailable"


def _refusal(limits: KeyLimits, d: LimitDecision) -> RateLimitError:
    """The 429 for a refused acquire, naming the limit and when to retry."""
    limit = limits.rpm if d.refused == "requests" else limits.tpm
    unit = "requests" if d.refused == "requests" else "tokens"
    headers = {
        **ratelimit_headers(limits, d),
        "Retry-After": str(max(1, math.ceil(d.retry_after_s))),
    }
    return RateLimitError(
        f"Rate limit reached for {unit} per minute (limit {limit}); "
        f"retry in {d.retry_after_s:.1f}s.",
        d.refused or "requests",
        headers,
    )


def _duration(seconds: float) -> str:
    """OpenAI's reset format: "250ms", "12s", "1m30s"."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    if seconds < 60:
        return f"{math.ceil(seconds)}s"
    return f"{int(seconds // 60)}m{math.ceil(seconds % 60)}s"


def ratelimit_headers(limits: KeyLimits, d: LimitDecision) -> dict[str, str]:
    return {
        "x-ratelimit-limit-requests": str(limits.rpm),
        "x-ratelimit-limit-tokens": str(limits.tpm),
        "x-ratelimit-remaining-requests": str(d.remaining_requests),
        "x-ratelimit-remaining-tokens": str(d.remaining_tokens),
        "x-ratelimit-reset-requests": _duration(d.reset_requests_s),
        "x-ratelimit-reset-tokens": _duration(d.reset_tokens_s),
    }


class Admission:
    """What one admitted request holds; `settle` and `release` each act once."""

    def __init__(
        self,
        limiter: Limiter,
        key_id: str,
        limits: KeyLimits,
        num_reserved: int,
        headers: dict[str, str],
        stream_id: str | None,
    ) -> None:
        self.limiter, self.key_id, self.limits = limiter, key_id, limits
        self.num_reserved = num_reserved
        self.headers = headers
        self.stream_id = stream_id
        self.is_settled = False
        # NOTE: the slot is a lease (a gateway killed mid-request frees it when it lapses):
        # renewed here while the request runs, or one running past a lease would stop
        # counting against its key's max_streams.
        self._lease = None if stream_id is None else asyncio.create_task(self._keep_lease())

    async def settle(self, num_used: int) -> None:
        """Refund the unused reservation (or charge what went over it). A store that cannot
        be reached loses the adjustment (logged): the reply itself is not failed for it."""
        if self.is_settled:
            return
        self.is_settled = True
        delta = num_used - self.num_reserved
        if delta:
            await _logged(self.limiter.store.adjust_tokens(self.key_id, self.limits, delta))

    async def _keep_lease(self) -> None:
        """Renew the stream slot's lease three times a lease until released; a store that
        cannot be reached is logged (the request is not failed for it)."""
        lease = self.limiter.config.stream_lease_s
        while self.stream_id is not None:
            await asyncio.sleep(lease / 3)
            stream_id = self.stream_id
            if stream_id is not None:
                await _logged(self.limiter.store.renew_stream(self.key_id, stream_id, lease))

    async def release(self) -> None:
        """Give the stream slot back; a reservation never settled is refunded whole."""
        await self.settle(0)
        if self._lease is not None:
            self._lease.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lease
        if self.stream_id is not None:
            stream_id, self.stream_id = self.stream_id, None
            await _logged(self.limiter.store.release_stream(self.key_id, stream_id))


async def _logged(call: Awaitable[None]) -> None:
    try:
        await call
    except Exception as e:  # the store is down; its lease or the next refill repairs it
        logger.warning("rate-limit store unreachable while settling: %r", e)


class Limiter:
    def __init__(self, store: RateLimitStore, config: LimitsConfig) -> None:
        self.store = store
        self.config = config

    def limits_for(self, key: ApiKey) -> KeyLimits:
        c = self.config
        return KeyLimits(
            rpm=key.rpm or c.default_rpm,
            tpm=key.tpm or c.default_tpm,
            max_streams=key.max_streams or c.default_max_streams,
        )

    async def check_open(self, key: ApiKey) -> None:
        """RateLimitError unless one more request could be taken now: refuses a key that is
        over its rate before its body is read and tokenized. Takes nothing."""
        limits = self.limits_for(key)
        try:
            d = await self.store.peek(key.key_id, limits)
        except Exception as e:
            raise LimitsUnavailableError("the rate-limit store is unreachable; retry") from e
        if not d.is_allowed:
            raise _refusal(limits, d)

    async def take_request(self, key: ApiKey) -> None:
        """One request of the key's rate and no tokens (a conversation created), or
        RateLimitError."""
        await (await self.admit(key, 0, is_stream=False)).release()

    async def admit(
        self, key: ApiKey, num_tokens: int, is_stream: bool, num_requests: int = 1
    ) -> Admission:
        """Reserve `num_requests` requests (one per engine request: prompts x n) and
        `num_tokens` tokens, or raise RateLimitError (429 with Retry-After and
        x-ratelimit-*)."""
        limits = self.limits_for(key)
        if num_tokens > limits.tpm or num_requests > limits.rpm:
            raise RateLimitError(
                f"Request too large: it needs up to {num_tokens} tokens (prompt + max_tokens) "
                f"and {num_requests} requests, but this key's limits are {limits.tpm} tokens "
                f"and {limits.rpm} requests per minute.",
                "tokens" if num_tokens > limits.tpm else "requests",
                {"Retry-After": "60"},
            )
        try:
            d = await self.store.acquire(key.key_id, limits, num_tokens, num_requests)
        except Exception as e:
            raise LimitsUnavailableError("the rate-limit store is unreachable; retry") from e
        if not d.is_allowed:
            raise _refusal(limits, d)
        headers = ratelimit_headers(limits, d)
        stream_id = None
        if is_stream:
            stream_id = secrets.token_hex(8)
            lease = self.config.stream_lease_s
            try:
                has_slot = await self.store.acquire_stream(
                    key.key_id, stream_id, limits.max_streams, lease
                )
            except Exception as e:
                await _logged(self.store.adjust_tokens(key.key_id, limits, -num_tokens))
                raise LimitsUnavailableError("the rate-limit store is unreachable; retry") from e
            if not has_slot:
                await _logged(self.store.adjust_tokens(key.key_id, limits, -num_tokens))
                raise RateLimitError(
                    f"Too many concurrent streams for this key (limit {limits.max_streams}).",
                    "streams",
                    {**headers, "Retry-After": "1"},
                )
        return Admission(self, key.key_id, limits, num_tokens, headers, stream_id)
