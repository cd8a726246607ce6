"""What every chatfleet HTTP front (server, router, gateway) installs the same way: the error
handlers that turn any failure into OpenAI's error shape, and the client-disconnect watch for
requests that are proxied whole (not streamed)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from chatfleet.errors import ChatfleetError, InvalidRequestError
from chatfleet.server.errors import NotFoundError, error_json, to_error_response

DISCONNECT_POLL_S = 0.1


def install_error_handlers(app: FastAPI, logger: logging.Logger | None = None) -> None:
    """Typed errors keep their status; validation and routing errors become 4xx; anything
    else is a 500 (logged to `logger` when given) and never a traceback to the client."""

    @app.exception_handler(ChatfleetError)
    async def on_error(_: Request, exc: ChatfleetError) -> JSONResponse:
        return error_json(exc)

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


async def unless_disconnected(request: Request, work: Awaitable[Response]) -> Response:
    """`work`'s response, or 499 once the client has left; `work` is then cancelled, which
    closes its upstream request, so the engine behind it aborts the request too."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                return Response(status_code=499)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
