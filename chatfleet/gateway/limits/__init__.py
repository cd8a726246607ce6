"""Rate-limit stores, picked by the --limits value: "memory" or a redis:// URL."""

from __future__ import annotations

from chatfleet.gateway.limits.base import KeyLimits, LimitDecision, RateLimitStore
from chatfleet.gateway.limits.memory import MemoryRateLimitStore

__all__ = ["KeyLimits", "LimitDecision", "RateLimitStore", "open_limits"]


def _redis(url: str) -> RateLimitStore:
    from chatfleet.gateway.limits.redis import RedisRateLimitStore

    return RedisRateLimitStore(url)


LIMIT_STORES = {"memory": lambda _: MemoryRateLimitStore(), "redis": _redis, "rediss": _redis}


def open_limits(spec: str) -> RateLimitStore:
    """ValueError for anything but "memory" or a redis(s):// URL."""
    scheme = spec.split("://", 1)[0] if "://" in spec else spec
    make = LIMIT_STORES.get(scheme)
    if make is None:
        raise ValueError(f"unsupported limits backend {spec!r}: use memory or redis://HOST:PORT")
    return make(spec)
