"""FastAPI app: thin routes over OpenAIServing; one handler maps every error to OpenAI JSON."""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from chatfleet.engine.protocol import EngineClient
from chatfleet.errors import EngineDeadError
from chatfleet.server.body import read_json
from chatfleet.server.config import ServerConfig
from chatfleet.server.errors import (
    AuthenticationError,
    DrainingError,
    OverloadedError,
    error_json,
    to_error_response,
)
from chatfleet.server.handlers import install_error_handlers
from chatfleet.server.metrics import ServerMetrics
from chatfleet.server.protocol import ChatCompletionRequest, CompletionRequest
from chatfleet.server.serving import ClientDisconnected, Job, OpenAIServing

_ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_ERROR_CODES = {
    "400": "Invalid request (bad JSON, bad field, context length exceeded)",
    "401": "Missing or wrong API key",
    "404": "Unknown model",
    "413": "Request body too large",
    "500": "The engine failed",
    "503": "Overloaded or shutting down; retry after Retry-After seconds",
    "504": "The request exceeded --request-timeout and was aborted",
}


def _openapi_extra(model: type) -> dict[str, Any]:
    responses = {
        code: {"description": d, "content": {"application/json": {"schema": _ERROR_SCHEMA}}}
        for code, d in _ERROR_CODES.items()
    }
    responses["200"] = {
        "description": "A completion object, or an SSE stream of chunks when stream=true",
        "content": {"text/event-stream": {}},
    }
    schema = model.model_json_schema()  # type: ignore[attr-defined]
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
        "responses": responses,
    }


@dataclass
class AppState:
    engine: EngineClient
    config: ServerConfig
    metrics: ServerMetrics
    serving: OpenAIServing
    num_in_flight: int = 0
    draining: bool = False

    async def read_json(self, request: Request) -> Any:
        """The body as JSON, or a 400/413 in OpenAI's shape (never a framework 422)."""
        return await read_json(request, self.config.max_body_bytes, self.config.max_json_depth)

    def authorize(self, request: Request) -> None:
        key = self.config.api_key
        if key is None:
            return
        header = request.headers.get("authorization", "")
        if header != f"Bearer {key}":
            raise AuthenticationError("Incorrect or missing API key.")

    def admit(self) -> Callable[[], None]:
        """Take an in-flight slot or refuse with 503 + Retry-After; returns the release."""
        if self.draining:
            raise DrainingError("the server is shutting down", retry_after_s=5)
        if self.engine.is_dead:
            raise EngineDeadError("the engine is dead; the server is exiting")
        limit = self.config.max_num_seqs + self.config.max_queue_len
        if self.num_in_flight >= limit:
            raise OverloadedError(f"{self.num_in_flight} requests in flight (limit {limit})")
        self.num_in_flight += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.num_in_flight -= 1

        return release

    async def run(self, request: Request, make_job: Callable[[Any], Job]) -> Response:
        self.authorize(request)
        job = make_job(await self.read_json(request))
        release = self.admit()
        try:
            response = await self.serving.execute(request, job)
        except BaseException:
            release()
            raise
        if isinstance(response, StreamingResponse):
            response.body_iterator = _release_after(response.body_iterator, release)
        else:
            release()
        return response


async def _release_after(body: AsyncIterable, release: Callable[[], None]) -> AsyncIterator:
    try:
        async for chunk in body:
            yield chunk
    finally:
        release()
        aclose = getattr(body, "aclose", None)
        if aclose is not None:
            await aclose()


def build_app(engine: EngineClient, config: ServerConfig) -> FastAPI:
    app = FastAPI(title="chatfleet", version="0.1.0")
    metrics = ServerMetrics(config.model_names[0])
    state = AppState(engine, config, metrics, OpenAIServing(engine, config, metrics))
    app.state.chatfleet = state

    install_error_handlers(app)

    @app.exception_handler(ClientDisconnected)
    async def on_disconnect(_: Request, exc: ClientDisconnected) -> Response:
        return Response(status_code=499)

    @app.post("/v1/chat/completions", openapi_extra=_openapi_extra(ChatCompletionRequest))
    async def chat_completions(request: Request) -> Response:
        return await state.run(request, state.serving.chat_job)

    @app.post("/v1/completions", openapi_extra=_openapi_extra(CompletionRequest))
    async def completions(request: Request) -> Response:
        return await state.run(request, state.serving.completion_job)

    @app.get("/v1/models", responses={401: {"description": "Missing or wrong API key"}})
    async def models(request: Request) -> dict[str, Any]:
        state.authorize(request)
        created = int(time.time())
        return {
            "object": "list",
            "data": [
                {
                    "id": name,
                    "object": "model",
                    "created": created,
                    "owned_by": "chatfleet",
                    "max_model_len": engine.max_model_len,
                }
                for name in config.model_names
            ],
        }

    @app.get("/health", responses={503: {"description": "The engine loop is dead or stalled"}})
    async def health() -> Response:
        try:
            engine.check_health(config.health_max_stall_s)
        except EngineDeadError as e:
            return JSONResponse(to_error_response(e).body, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/ready", responses={503: {"description": "Draining or engine dead"}})
    async def ready() -> Response:
        if state.draining or engine.is_dead:
            return error_json(DrainingError("not ready"))
        return JSONResponse({"status": "ready"})

    @app.get("/metrics")
    async def prometheus() -> Response:
        data = metrics.render(await engine.get_stats())
        return Response(data, media_type="text/plain; version=0.0.4; charset=utf-8")

    return app
