"""Ingress: the OpenAI routes of `chatfleet serve` (server.app.build_app), over RayEngineClient.

Serve builds the ASGI app after the constructor (`__serve_build_asgi_app__`), so the app is
made from this replica's handle to the engine replicas: the routes, validation, admission
control, SSE framing and error mapping are the server's own code, not a copy.
"""

from __future__ import annotations

from typing import Any

from chatfleet.model.tokenizer import Tokenizer
from chatfleet.ray_serve.calls import RouteKeysMiddleware
from chatfleet.ray_serve.client import RayEngineClient, RetryConfig
from chatfleet.server.app import build_app
from chatfleet.server.config import ServerConfig


class Ingress:
    """Deployed by app.py with `serve.ingress()` (deferred app) and `serve.deployment`."""

    def __init__(
        self,
        engine_handle: Any,
        model: str | None,
        server_config: ServerConfig,
        retry: RetryConfig,
        session_header: str,
    ) -> None:
        self.engine_handle, self.model, self.retry = engine_handle, model, retry
        self.server_config, self.session_header = server_config, session_header

    async def __serve_build_asgi_app__(self) -> Any:
        # NOTE: waits for one engine replica: the context length depends on the model file
        # and the replicas' settings, and the server must know it before its first request.
        facts = await self.engine_handle.facts.remote()
        tokenizer = Tokenizer.from_model_path(self.model)
        client = RayEngineClient(self.engine_handle, tokenizer, facts.max_model_len, self.retry)
        app = build_app(client, self.server_config)
        app.add_middleware(
            RouteKeysMiddleware,
            max_body_bytes=self.server_config.max_body_bytes,
            session_header=self.session_header,
        )
        return app
