"""GET / and /static/*: the web chat, a static page with no CDN, and the headers that keep
any HTML the gateway sends from running foreign code."""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

STATIC_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "static")
# The page runs only its own scripts: model output that slips past the sanitizer still
# cannot execute (no inline script, no eval, no foreign origin).
PAGE_HEADERS = {
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}

_PAGE_HEADER_BYTES = [(k.encode(), v.encode()) for k, v in PAGE_HEADERS.items()]

router = APIRouter(include_in_schema=False)


@router.get("/")
async def page() -> Response:
    return FileResponse(os.path.join(STATIC_DIR, "index.html"))


class PageHeadersMiddleware:
    """Every HTML response carries PAGE_HEADERS, however it was routed (/ or /static/...);
    every response says nosniff."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in _OURS]
                content_type = dict(headers).get(b"content-type", b"")
                if content_type.startswith(b"text/html"):
                    headers += _PAGE_HEADER_BYTES
                else:
                    headers.append((b"x-content-type-options", b"nosniff"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


_OURS = {k.encode() for k in PAGE_HEADERS}


static_files = StaticFiles(directory=STATIC_DIR)
