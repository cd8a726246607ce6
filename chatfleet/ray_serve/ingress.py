"""Ingress: the OpenAI routes of `chatfleet serve` (server/api_server.py) over RayEngineClient.

Serve builds the ASGI app after the constructor (`__serve_build_asgi_app__`), so the app is
made from this replica's handle to the engine replicas: the routes, validation, admission
control, SSE framing and error mapping are the server's own code, not a copy.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from chatfleet.config.server_config import API_KEY_ENV, ServerConfig
from chatfleet.modelfile.tokenizer import Tokenizer
from chatfleet.ray_serve.calls import RouteKeysMiddleware
from chatfleet.ray_serve.ray_engine_client import RayEngineClient, RetryConfig
from chatfleet.server.api_server import build_app


@dataclass(frozen=True)
class FleetLimits:
    """What the ingress must know of the fleet before its first request."""

    max_num_seqs: int  # running requests, all replicas together at their most
    model: str | None  # the replicas' model file (for the tokenizer)


class Ingress:
    """Deployed by app.py with `serve.ingress()` (deferred app) and `serve.deployment`."""

    def __init__(
        self,
        engine_handle: Any,
        limits: FleetLimits,
        server_config: ServerConfig,
        retry: RetryConfig,
        session_header: str,
    ) -> None:
        self.engine_handle, self.limits, self.retry = engine_handle, limits, retry
        self.server_config, self.session_header = server_config, session_header

    async def __serve_build_asgi_app__(self) -> Any:
        # NOTE: waits for one engine replica: the context length depends on the model file
        # and the replicas' settings, and the server must know it before its first request.
        facts = await self.engine_handle.facts.remote()
        tokenizer = Tokenizer.from_model_path(self.limits.model)
        client = RayEngineClient(
            self.engine_handle,
            tokenizer,
            facts.max_model_len,
            self.limits.max_num_seqs,
            self.retry,
        )
        config = self.server_config.for_model(self.limits.model)
        if config.api_key is None and os.environ.get(API_KEY_ENV):
            # Deployed by Serve's own tooling (KubeRay): the key from the ingress's environment.
            config = dataclasses.replace(config, api_key=os.environ[API_KEY_ENV])
        app = build_app(client, config)
        app.add_middleware(
            RouteKeysMiddleware,
            max_body_bytes=self.server_config.max_body_bytes,
            session_header=self.session_header,
        )
        return app
