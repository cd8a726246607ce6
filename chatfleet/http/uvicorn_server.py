"""The uvicorn server every front runs in, and the logging set-up they share.

A first SIGTERM / SIGINT runs the front's drain step (if it has one: wait for in-flight
requests while refusing new ones), then uvicorn's graceful shutdown (open connections get
`graceful_s`); a second signal stops at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

import uvicorn


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise


class UvicornServer(uvicorn.Server):
    """`await serve()` returns after a signal; call `stop()` to end it from inside."""

    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        graceful_s: float,
        drain: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            timeout_graceful_shutdown=int(graceful_s),
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
