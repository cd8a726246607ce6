"""The OpenAI-compatible server over one EngineClient: thin routes, admission, drain.

POST /v1/chat/completions, /v1/completions   OpenAIServingChat / OpenAIServingCompletion
GET  /v1/models, /v1/models/{id}             the served names and the context length
GET  /health, /ready, /metrics               chatfleet.http.ops_routes (vLLM metric names)

Every /v1 route needs the API key when one is set. A request takes an in-flight slot or is
refused with 503 + Retry-After; a streamed response gives its slot back when it ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel

from chatfleet.config.server_config import ServerConfig
from chatfleet.engine.engine_client import EngineClient
from chatfleet.errors import EngineDeadError, InvalidRequestError
from chatfleet.http.body import read_json
from chatfleet.http.handlers import new_app
from chatfleet.http.http_errors import (
    ERROR_SCHEMA,
    DrainingError,
    ModelNotFoundError,
    OverloadedError,
    check_bearer,
)
from chatfleet.http.ops_routes import ops_router
from chatfleet.http.streaming import ClosingStreamingResponse
from chatfleet.server.protocol import ChatCompletionRequest, CompletionRequest
from chatfleet.server.server_metrics import ServerMetrics
from chatfleet.server.serving_base import OpenAIServing
from chatfleet.server.serving_chat import OpenAIServingChat
from chatfleet.server.serving_completion import OpenAIServingCompletion

logger = logging.getLogger("chatfleet.serve")
_ERROR_CODES = {
    "400": "Invalid request (bad JSON, bad field, context length exceeded)",
    "401": "Missing or wrong API key",
    "404": "Unknown model",
    "413": "Request body too large",
    "500": "The engine failed",
    "503": "Overloaded or shutting down; retry after Retry-After seconds",
    "504": "The request exceeded --request-timeout and was aborted",
}


def _openapi_extra(model: type[BaseModel]) -> dict[str, Any]:
    """The request body and responses of a route that reads its body itself (so a bad body
    is our 400, never a framework 422)."""
    responses: dict[str, Any] = {
        code: {"description": d, "content": {"application/json": {"schema": ERROR_SCHEMA}}}
        for code, d in _ERROR_CODES.items()
    }
    responses["200"] = {
        "description": "A completion object, or an SSE stream of chunks when stream=true",
        "content": {"text/event-stream": {}},
    }
    schema = _request_schema(model)
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
        "responses": responses,
    }


_REF = "#/components/schemas/{model}"


def _request_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The body's JSON schema, its nested models referenced under components/schemas (where
    `_with_components` puts them), so every $ref in the document resolves."""
    schema = model.model_json_schema(ref_template=_REF)
    schema.pop("$defs", None)
    return schema


def _with_components(app: FastAPI, models: list[type[BaseModel]]) -> None:
    """Add the nested request models to the OpenAPI document FastAPI builds."""
    schemas: dict[str, Any] = {}
    for model in models:
        schemas.update(model.model_json_schema(ref_template=_REF).get("$defs", {}))
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = build()
            spec.setdefault("components", {}).setdefault("schemas", {}).update(schemas)
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]


@dataclass
class ServerState:
    """The server's mutable state: in-flight count and whether it is draining."""

    engine: EngineClient
    config: ServerConfig
    metrics: ServerMetrics
    num_in_flight: int = 0
    draining: bool = False

    def authorize(self, request: Request) -> None:
        """AuthenticationError (401) unless the request carries the API key (when one is set)."""
        check_bearer(request.headers.get("authorization", ""), self.config.api_key)

    def admit(self, num_requests: int = 1) -> Callable[[], None]:
        """Take `num_requests` in-flight slots (one per engine request: prompts x n) or
        refuse with 503 + Retry-After (400 if they could never fit); returns the release."""
        if self.draining:
            raise DrainingError("the server is shutting down", retry_after_s=5)
        if self.engine.is_dead:
            raise EngineDeadError("the engine is dead; the server is exiting")
        limit = self.engine.max_num_seqs + self.config.max_queue_len
        if num_requests > limit:
            raise InvalidRequestError(
                f"the request needs {num_requests} engine requests (prompts x n); this server "
                f"takes at most {limit} at once"
            )
        if self.num_in_flight + num_requests > limit:
            raise OverloadedError(f"{self.num_in_flight} requests in flight (limit {limit})")
        self.num_in_flight += num_requests
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.num_in_flight -= num_requests

        return release

    async def drain(self) -> None:
        """Refuse new requests (/ready turns 503) and wait for in-flight ones, at most
        the shutdown timeout."""
        self.draining = True
        logger.info("draining %d in-flight requests", self.num_in_flight)
        deadline = time.monotonic() + self.config.shutdown_timeout_s
        while self.num_in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    def check_ready(self) -> None:
        if self.draining or self.engine.is_dead:
            raise DrainingError("not ready")

    async def run(self, serving: OpenAIServing, request: Request) -> Response:
        """One completion request: read, admit, execute; the slot is held while it streams."""
        c = self.config
        body = await read_json(request, c.max_body_bytes, c.max_json_depth, c.http.body_timeout_s)
        job = serving.make_job(body)
        release = self.admit(len(job.prompts) * job.params.n)
        try:
            response = await serving.create(request, job)
        except BaseException:
            release()
            raise
        if isinstance(response, ClosingStreamingResponse):

            async def release_when_closed() -> None:
                release()

            response.on_close(release_when_closed)
        else:
            release()
        return response


def _openai_router(state: ServerState) -> APIRouter:
    async def authorized(request: Request) -> None:
        state.authorize(request)

    router = APIRouter(
        dependencies=[Depends(authorized)],
        responses={401: {"description": "Missing or wrong API key"}},
    )
    chat = OpenAIServingChat(state.engine, state.config, state.metrics)
    completion = OpenAIServingCompletion(state.engine, state.config, state.metrics)

    @router.post("/v1/chat/completions", openapi_extra=_openapi_extra(ChatCompletionRequest))
    async def chat_completions(request: Request) -> Response:
        return await state.run(chat, request)

    @router.post("/v1/completions", openapi_extra=_openapi_extra(CompletionRequest))
    async def completions(request: Request) -> Response:
        return await state.run(completion, request)

    def model_card(name: str) -> dict[str, Any]:
        return {
            "id": name,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "chatfleet",
            "max_model_len": state.engine.max_model_len,
        }

    @router.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(name) for name in state.config.names]}

    @router.get("/v1/models/{model_id:path}", responses={404: {"description": "Unknown model"}})
    async def model(model_id: str) -> dict[str, Any]:
        """One served model, as the openai SDK's models.retrieve reads it."""
        if model_id not in state.config.names:
            raise ModelNotFoundError(f"The model `{model_id}` does not exist.", param="model")
        return model_card(model_id)

    return router


def build_app(engine: EngineClient, config: ServerConfig) -> FastAPI:
    """The app; `app.state.chatfleet` is its ServerState (drain it before exiting)."""
    state = ServerState(engine, config, ServerMetrics(config.names[0]))
    app = new_app("chatfleet")
    app.state.chatfleet = state
    app.include_router(_openai_router(state))
    _with_components(app, [ChatCompletionRequest, CompletionRequest])

    async def metrics() -> bytes:
        return state.metrics.render(await engine.get_stats())

    def health() -> None:
        engine.check_health(config.health_max_stall_s)

    app.include_router(ops_router(health, state.check_ready, metrics, config.api_key))
    return app
