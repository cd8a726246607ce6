"""Run the OpenAI server over a local engine until a signal, or until the engine dies.

SIGTERM: /ready turns 503 and new requests get 503 at once; in-flight requests finish for up
to the shutdown timeout; then the process exits 0. If the engine dies, in-flight requests get
an error, /health fails, and run_server returns 1 so a supervisor restarts the process.
"""

from __future__ import annotations

import asyncio
import logging

from chatfleet.config.engine_config import EngineConfig
from chatfleet.config.server_config import ServerConfig
from chatfleet.engine.async_engine import AsyncEngine
from chatfleet.http.uvicorn_server import UvicornServer
from chatfleet.server.api_server import build_app

logger = logging.getLogger("chatfleet.serve")
ENGINE_POLL_S = 0.1
# After the engine died: time for in-flight responses to deliver their errors.
DEATH_GRACE_S = 0.5


async def _watch_engine(engine: AsyncEngine, server: UvicornServer) -> int:
    """1 once the engine is dead (and the server told to stop), else runs until cancelled."""
    while not server.should_exit:
        if engine.is_dead:
            logger.error("engine died: %r; exiting", engine.dead_error)
            await asyncio.sleep(DEATH_GRACE_S)
            server.stop()
            return 1
        await asyncio.sleep(ENGINE_POLL_S)
    return 0


def run_server(engine_config: EngineConfig, config: ServerConfig, host: str, port: int) -> int:
    """Serve on host:port until SIGTERM / SIGINT (exit status 0) or the engine's death (1)."""
    engine = AsyncEngine(engine_config)
    app = build_app(engine, config.for_model(engine_config.model))
    state = app.state.chatfleet
    server = UvicornServer(app, host, port, graceful_s=5, drain=state.drain, limits=config.http)

    async def main() -> int:
        watcher = asyncio.create_task(_watch_engine(engine, server))
        await server.serve()
        if watcher.done():
            return watcher.result()
        watcher.cancel()
        return 0

    try:
        return asyncio.run(main())
    finally:
        engine.shutdown()
