"""The FastAPI app every front starts from: any failure becomes OpenAI's error shape, and a
request proxied whole (not streamed) is cancelled when its client leaves."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from chatfleet.errors import ChatfleetError, InvalidRequestError
from chatfleet.http.http_errors import NotFoundError, error_json, to_error_response

DISCONNECT_POLL_S = 0.1
# Not a real status: what a request gets when its client left before the answer (nginx's).
CLIENT_CLOSED_STATUS = 499

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


class ClientDisconnectedError(Exception):
    """The client left before the response began; answered with 499 (nobody reads it)."""


def new_app(
    title: str, lifespan: Lifespan | None = None, logger: logging.Logger | None = None
) -> FastAPI:
    """A FastAPI app with the error handlers installed (unexpected errors logged to
    `logger` when given)."""
    app = FastAPI(title=title, version="0.1.0", lifespan=lifespan)
    install_error_handlers(app, logger)
    return app


def install_error_handlers(app: FastAPI, logger: logging.Logger | None = None) -> None:
    """Typed errors keep their status; validation and routing errors become 4xx; anything
    else is a 500 and never a traceback to the client."""

    @app.exception_handler(ChatfleetError)
    async def on_error(_: Request, exc: ChatfleetError) -> JSONResponse:
        return error_json(exc)

    @app.exception_handler(ClientDisconnectedError)
    async def on_disconnect(_: Request, exc: ClientDisconnectedError) -> Response:
        return Response(status_code=CLIENT_CLOSED_STATUS)

    @app.exception_handler(RequestValidationError)
    async def on_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_json(InvalidRequestError(str(exc.errors()[:1])))

    @app.exception_handler(StarletteHTTPException)
    async def on_http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return error_json(NotFoundError("no such route"))
        err = InvalidRequestError(str(exc.detail))
        return JSONResponse(to_error_response(err).body, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def on_unexpected(_: Request, exc: Exception) -> JSONResponse:
        if logger is not None:
            logger.exception("unexpected error", exc_info=exc)
        return error_json(exc)


async def unless_disconnected(request: Request, work: Awaitable[Any]) -> Any:
    """`work`'s result; ClientDisconnectedError once the client has left, after cancelling
    `work` (which closes its upstream request, so the engine behind it aborts too)."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise ClientDisconnectedError()
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
