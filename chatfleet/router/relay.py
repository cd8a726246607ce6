"""One accepted upstream response, relayed to the client chunk by chunk.

SSE events are never torn: a partial event is held until its blank line. A resumable stream
(stream_ledger.py) whose replica fails or hangs mid-way continues on another replica:

    replica A: chunks ... x  (reset, gone, its engine dead, or no token within token_timeout_s)
    router:    the ledger's continuation -> another healthy replica (policy's choice) -> B
    replica B: the rest of the reply, from the first character the client lacks

The client sees a pause, never an error, for up to `max_resumptions` failures; past them, or
for a stream that cannot be resumed, an SSE `error` event and `[DONE]` (for other content a
dropped connection: a truncated JSON body must not look complete).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import httpx

from chatfleet.http import sse
from chatfleet.http.http_errors import ReplicaFailedError, ReplicaHungError
from chatfleet.router.snapshot import RouteRequest
from chatfleet.router.stream_ledger import StreamLedger

if TYPE_CHECKING:
    from chatfleet.router.forwarder import Router

logger = logging.getLogger("chatfleet.router")
T = TypeVar("T")


class ReplicaStreamError(Exception):
    """The replica's stream reported the replica's own failure (its engine died)."""


class ReplicaEjectedError(Exception):
    """The pool ejected the replica while a request waited on it (Router.until)."""


@dataclass
class Upstream:
    """An accepted response of one replica: its first chunk read, the rest to come."""

    rid: str
    response: httpx.Response
    first: bytes | None
    chunks: AsyncIterator[bytes]
    due: float | None  # when its next token is due (streams), else None


@dataclass(frozen=True)
class Resumption:
    """What resuming a stream elsewhere needs besides its ledger."""

    ledger: StreamLedger
    request: RouteRequest  # the policy's view of it (its prompt's prefix: a continuation's)
    method: str
    path: str
    headers: dict[str, str]
    tried: list[str]  # replicas this request went to (not tried again)
    budget: int  # resumptions left


class Relay:
    """Relays `up` (and, after failures, its successors); closes the current one exactly
    once."""

    def __init__(self, router: Router, up: Upstream, resumption: Resumption | None) -> None:
        self.router, self.up, self.resumption = router, up, resumption
        self.is_sse = up.response.headers.get("content-type", "").startswith("text/event-stream")
        self.budget = resumption.budget if resumption is not None else 0
        self.is_closed = False

    async def close(self) -> None:
        if not self.is_closed:
            self.is_closed = True
            await self.router._close(self.up.rid, self.up.response)

    async def body(self) -> AsyncIterator[bytes]:
        try:
            while True:
                try:
                    async for piece in self._relay_current():
                        yield piece
                    return
                except TimeoutError:
                    self.router._hung(self.up.rid)
                    error: Exception = ReplicaHungError("the replica stopped sending tokens")
                except (httpx.HTTPError, ReplicaStreamError, ReplicaEjectedError) as e:
                    self._failed(e)
                    if not self.is_sse:
                        failed = f"replica {self.up.rid} failed mid-response"
                        raise ReplicaFailedError(failed) from e
                    error = ReplicaFailedError("the replica failed mid-stream")
                if not await self._resume():
                    ledger = self.resumption.ledger if self.resumption is not None else None
                    if ledger is not None and ledger.finished:  # the reply is whole: end it
                        yield sse.DONE.encode()
                    else:
                        yield (sse.error_event(error) + sse.DONE).encode()
                    return
        finally:
            await self.close()

    async def _relay_current(self) -> AsyncIterator[bytes]:
        """The current replica's body as it arrives (through the ledger, if any)."""
        events = sse.EventSplitter()  # a new replica: the last one's torn event is dropped
        ledger = self.resumption.ledger if self.resumption is not None else None
        timeout_s = self.router.config.proxy.token_timeout_s
        chunk = self.up.first
        while chunk is not None:
            if not self.is_sse:
                yield chunk
            elif complete := events.feed(chunk):
                if self.up.due is not None and b"data:" in complete:  # a token, not a comment
                    self.up.due = time.monotonic() + timeout_s
                out = ledger.relay(complete) if ledger is not None else complete
                if out:
                    yield out
                if ledger is not None and ledger.replica_failed:
                    raise ReplicaStreamError("its engine died")
            # NOTE: only a stream that can move on stops waiting when its replica is ejected;
            # any other keeps its token deadline (an ejection by slow probes must not cut it).
            watched = self.up.rid if self._can_resume() else None
            chunk = await self.router.until(watched, self.up.due, anext(self.up.chunks, None))
        if rest := events.flush():
            yield ledger.relay(rest) if ledger is not None else rest
        if ledger is not None and ledger.replica_failed:
            raise ReplicaStreamError("its engine died")

    def _failed(self, e: Exception) -> None:
        self.router.pool.record_failure(self.up.rid, time.monotonic())
        self.router.metrics.stream_errors.labels(self.up.rid).inc()
        logger.warning("replica %s failed mid-response: %r", self.up.rid, e)

    def _can_resume(self) -> bool:
        r = self.resumption
        return r is not None and self.budget > 0 and not r.ledger.finished

    async def _resume(self) -> bool:
        """Moves the stream to another replica; False when it cannot (nothing to resume, no
        budget left, no replica accepted the continuation)."""
        r = self.resumption
        if r is None or not self._can_resume():
            return False
        self.budget -= 1
        metrics = self.router.metrics
        metrics.resumptions.labels("attempted").inc()
        start = time.monotonic()
        await self.close()
        up = await self.router.reopen(r, r.ledger.continuation())
        if up is None:
            metrics.resumptions.labels("failed").inc()
            return False
        self.up, self.is_closed = up, False
        metrics.resumptions.labels("succeeded").inc()
        metrics.resume_seconds.observe(time.monotonic() - start)
        tokens = len(r.ledger.token_ids)
        logger.warning("stream resumed on replica %s after %d tokens", up.rid, tokens)
        return True


async def before(due: float | None, step: Awaitable[T]) -> T:
    """`step`, or TimeoutError if time.monotonic() passes `due` first (None: no deadline)."""
    if due is None:
        return await step
    return await asyncio.wait_for(step, max(due - time.monotonic(), 0.0))
