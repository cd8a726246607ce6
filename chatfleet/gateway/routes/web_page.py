"""GET / and /static/*: the web chat, a static page with no CDN."""

from __future__ import annotations

import os

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

router = APIRouter(include_in_schema=False)


@router.get("/")
async def page() -> Response:
    return FileResponse(os.path.join(STATIC_DIR, "index.html"), headers=PAGE_HEADERS)


static_files = StaticFiles(directory=STATIC_DIR)
