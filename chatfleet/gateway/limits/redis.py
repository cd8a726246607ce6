"""Redis rate-limit store: GCRA in Lua on Redis's own clock, so every gateway process that
shares the Redis shares each key's limits exactly (no clock skew between hosts).

Each script runs atomically on the server. Buckets are two strings per key holding `tat` in
epoch seconds, expiring once the bucket is full again; stream slots are a sorted set of
stream ids scored by lease end, so a gateway killed mid-stream frees its slots when they lapse.
"""

from __future__ import annotations

from typing import Any

from chatfleet.extras import require
from chatfleet.gateway.limits.base import (
    PERIOD_S,
    GcraStep,
    KeyLimits,
    LimitDecision,
    RateLimitStore,
    decision,
    refused_kind,
)

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local period = tonumber(ARGV[1])
local function save(key, tat)
  redis.call('SET', key, string.format('%.6f', tat), 'PX', math.ceil((tat - now) * 1000) + 1000)
end
"""

# KEYS: request bucket, token bucket. ARGV: period_s, rpm, tpm, num_tokens, num_requests,
# commit (0: only look). Returns (request allowed, token allowed, request tat - now,
# token tat - now, retry afters).
_ACQUIRE = (
    _NOW
    + """
local function step(key, limit, cost)
  local v = redis.call('GET', key)
  local old = now
  if v then old = tonumber(v) end
  local new_tat = math.max(old, now) + cost * period / limit
  local over = new_tat - now - period
  if over > 1e-9 then return 0, old, over, old end
  return 1, new_tat, 0, old
end
local r_ok, r_tat, r_retry, r_old = step(KEYS[1], tonumber(ARGV[2]), tonumber(ARGV[5]))
local t_ok, t_tat, t_retry, t_old = step(KEYS[2], tonumber(ARGV[3]), tonumber(ARGV[4]))
if r_ok == 1 and t_ok == 1 and ARGV[6] == '1' then
  save(KEYS[1], r_tat)
  save(KEYS[2], t_tat)
else  -- nothing was taken: report the buckets as they are
  r_tat, t_tat = r_old, t_old
end
local function f(x) return string.format('%.6f', x) end
return {r_ok, t_ok, f(r_tat - now), f(t_tat - now), f(r_retry), f(t_retry)}
"""
)

# KEYS: token bucket. ARGV: period_s, tpm, delta.
_ADJUST = (
    _NOW
    + """
local v = redis.call('GET', KEYS[1])
local base = now
if v then base = math.max(tonumber(v), now) end
save(KEYS[1], math.max(base + tonumber(ARGV[3]) * period / tonumber(ARGV[2]), now))
return 1
"""
)

# KEYS: stream set. ARGV: period_s (unused), stream_id, max_streams, lease_s.
_ACQUIRE_STREAM = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[4]) * 1000))
return 1
"""
)

# KEYS: stream set. ARGV: period_s (unused), stream_id, lease_s.
_RENEW_STREAM = (
    _NOW
    + """
if redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[3]), ARGV[2]) == 1 then
  redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3]) * 1000))
end
return 1
"""
)


def _keys(key_id: str) -> tuple[str, str, str]:
    # The {hash tag} keeps one key's buckets in one slot on a Redis cluster.
    base = f"chatfleet:rl:{{{key_id}}}"
    return f"{base}:requests", f"{base}:tokens", f"{base}:streams"


class RedisRateLimitStore(RateLimitStore):
    name = "redis"

    def __init__(self, url: str) -> None:
        redis_asyncio = require("redis.asyncio", "redis", "rate limits shared through Redis")
        self.client: Any = redis_asyncio.from_url(url, decode_responses=True)
        self._acquire = self.client.register_script(_ACQUIRE)
        self._adjust = self.client.register_script(_ADJUST)
        self._acquire_stream = self.client.register_script(_ACQUIRE_STREAM)
        self._renew_stream = self.client.register_script(_RENEW_STREAM)

    async def acquire(
        self, key_id: str, limits: KeyLimits, num_tokens: int, num_requests: int = 1
    ) -> LimitDecision:
        return await self._take(key_id, limits, num_tokens, num_requests, commit=True)

    async def peek(self, key_id: str, limits: KeyLimits) -> LimitDecision:
        return await self._take(key_id, limits, 0, 1, commit=False)

    async def _take(
        self, key_id: str, limits: KeyLimits, num_tokens: int, num_requests: int, commit: bool
    ) -> LimitDecision:
        requests, tokens, _ = _keys(key_id)
        args = [PERIOD_S, limits.rpm, limits.tpm, num_tokens, num_requests, int(commit)]
        r_ok, t_ok, r_tat, t_tat, r_retry, t_retry = await self._acquire(
            keys=[requests, tokens], args=args
        )
        # Times come back relative to Redis's clock: decide as if now were 0.
        req = GcraStep(int(r_ok) == 1, float(r_tat), float(r_retry))
        tok = GcraStep(int(t_ok) == 1, float(t_tat), float(t_retry))
        return decision(0.0, limits, req, tok, refused_kind(req, tok))

    async def adjust_tokens(self, key_id: str, limits: KeyLimits, delta: int) -> None:
        _, tokens, _ = _keys(key_id)
        await self._adjust(keys=[tokens], args=[PERIOD_S, limits.tpm, delta])

    async def acquire_stream(
        self, key_id: str, stream_id: str, max_streams: int, lease_s: float
    ) -> bool:
        streams = _keys(key_id)[2]
        args: list[str | float] = [PERIOD_S, stream_id, max_streams, lease_s]
        return int(await self._acquire_stream(keys=[streams], args=args)) == 1

    async def renew_stream(self, key_id: str, stream_id: str, lease_s: float) -> None:
        await self._renew_stream(keys=[_keys(key_id)[2]], args=[PERIOD_S, stream_id, lease_s])

    async def release_stream(self, key_id: str, stream_id: str) -> None:
        await self.client.zrem(_keys(key_id)[2], stream_id)

    async def close(self) -> None:
        await self.client.aclose()
