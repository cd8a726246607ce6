"""The gateway's blocking work, off the event loop, in two separate bounded pools.

Database calls and tokenization each have their own limit: a flood of large prompts to
tokenize can fill its own pool, never the one the database calls (every request's key
lookup, every reply's heartbeat) wait for.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from anyio import CapacityLimiter, to_thread

_DB = CapacityLimiter(16)
_TOKENIZE = CapacityLimiter(2)  # CPU-bound: more than the cores buys nothing


async def run_db(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A blocking store call on a worker thread."""
    return await to_thread.run_sync(functools.partial(fn, *args, **kwargs), limiter=_DB)


async def run_tokenize(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Tokenizing (counting a prompt, planning a conversation's) on a worker thread."""
    return await to_thread.run_sync(functools.partial(fn, *args, **kwargs), limiter=_TOKENIZE)
