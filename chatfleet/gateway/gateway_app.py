"""The gateway's FastAPI app: the routers of routes/ over one Gateway (components.py).

GET  /, /static/*                 the web chat page (static, no CDN)
GET  /health                      200 while the process runs
/api/me, /api/usage, /api/conversations/*, /api/keys/*   the product API (routes/)
/v1/chat/completions, /v1/completions, /v1/models[/{id}] OpenAI API, same keys and limits
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from chatfleet.gateway.components import Gateway
from chatfleet.gateway.routes import account, api_keys, conversations, openai_api, web_page
from chatfleet.http.handlers import new_app
from chatfleet.http.ops_routes import ops_router

logger = logging.getLogger("chatfleet.gateway")


def build_gateway_app(gw: Gateway) -> FastAPI:
    """The app; its lifespan starts the upstream client and the sweeper and closes
    everything (store and limit store included) on shutdown."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await gw.upstream.start()
        sweeper = asyncio.create_task(gw.sweep_stale_replies())
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            await gw.close()

    app = new_app("chatfleet gateway", lifespan, logger)
    app.state.gateway = gw
    app.add_middleware(web_page.PageHeadersMiddleware)
    app.mount("/static", web_page.static_files, name="static")
    for router in (web_page.router, ops_router(), account.router, conversations.router):
        app.include_router(router)
    app.include_router(api_keys.router)
    app.include_router(openai_api.router)
    return app
