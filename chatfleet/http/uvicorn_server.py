"""The uvicorn server every front runs in, and the logging set-up they share.

A first SIGTERM / SIGINT runs the front's drain step (if it has one: wait for in-flight
requests while refusing new ones), then uvicorn's graceful shutdown (open connections get
`graceful_s`); a second signal stops at once.

Against slow and hostile clients (HttpLimitsConfig): a connection must finish each request's
headers within `header_timeout_s` (idle ones too), a connection past `max_connections` is
answered 503 in OpenAI's shape and closed, and an idle keep-alive connection is closed after
`keep_alive_s`. (The body deadline is the body reader's: chatfleet/http/body.py.)
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from chatfleet.config.http_config import HttpLimitsConfig
from chatfleet.errors import InvalidRequestError
from chatfleet.http.http_errors import OverloadedError, to_error_response


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise


def _raw_error_response(exc: Exception, reason: str) -> bytes:
    """A whole HTTP/1.1 response with the OpenAI error body, written before (or without) the
    app: the connection is closed after it."""
    err = to_error_response(exc)
    body = json.dumps(err.body).encode()
    head = f"HTTP/1.1 {err.status_code} {reason}\r\ncontent-type: application/json\r\n"
    for name, value in err.headers.items():
        head += f"{name.lower()}: {value}\r\n"
    head += f"connection: close\r\ncontent-length: {len(body)}\r\n\r\n"
    return head.encode() + body


def _overloaded_response() -> bytes:
    exc = OverloadedError("too many open connections; retry", retry_after_s=1)
    return _raw_error_response(exc, "Service Unavailable")


class _GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline and a connection cap."""

    limits: HttpLimitsConfig = HttpLimitsConfig()
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            transport.write(_overloaded_response())
            transport.close()
            return
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def send_400_response(self, msg: str) -> None:
        # NOTE: a request the parser refuses (a malformed Content-Length, a bad request line)
        # never reaches the app; its 400 still has the OpenAI error shape, not plain text.
        self.transport.write(_raw_error_response(InvalidRequestError(msg), "Bad Request"))
        self.transport.close()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.limits.header_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        # NOTE: only a connection still waiting for headers: a request in progress has
        # disarmed the deadline, and keep-alive idleness is uvicorn's own timer.
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def _protocol(limits: HttpLimitsConfig) -> type[HttpToolsProtocol]:
    return type("GuardedProtocol", (_GuardedProtocol,), {"limits": limits})


class UvicornServer(uvicorn.Server):
    """`await serve()` returns after a signal; call `stop()` to end it from inside."""

    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        graceful_s: float,
        drain: Callable[[], Awaitable[None]] | None = None,
        limits: HttpLimitsConfig | None = None,
    ) -> None:
        limits = limits or HttpLimitsConfig()
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            timeout_graceful_shutdown=int(graceful_s),
            http=_protocol(limits),
            timeout_keep_alive=int(max(1, limits.keep_alive_s)),
        )
        super().__init__(config)
        self.drain = drain
        self.is_draining = False
        self.drain_task: asyncio.Task | None = None

    def stop(self) -> None:
        self.should_exit = True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # NOTE: not uvicorn's handler: that one re-raises the signal once serve() returns,
        # which kills the process before it stops what it started (replicas, the engine).
        if self.should_exit or self.is_draining:
            self.should_exit = self.force_exit = True
            return
        if self.drain is None:
            self.should_exit = True
            return
        self.is_draining = True
        # NOTE: a signal handler may interrupt the loop anywhere: the task is started from
        # the loop itself, which call_soon_threadsafe also wakes.
        loop = asyncio.get_running_loop()
        loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self.drain_task = asyncio.get_running_loop().create_task(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        try:
            if self.drain is not None:
                await self.drain()
        finally:
            self.should_exit = True
