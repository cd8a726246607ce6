"""/health, /ready and /metrics, the same on every front, from three callables.

health()  raises while the process cannot serve (503 with the error's body), else {"status": "ok"}
ready()   raises while it should get no new requests (503 ...), else {"status": "ready"}
metrics() the Prometheus text exposition
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from chatfleet.http.http_errors import check_bearer, to_error_response

Check = Callable[[], None]
# The Prometheus text format the fronts have always served (not the installed client's
# newest, which changes with its version).
METRICS_MEDIA_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _answer(check: Check | None, status: str) -> JSONResponse:
    """{"status": status}, or 503 with the error `check` raised."""
    try:
        if check is not None:
            check()
    except Exception as e:
        err = to_error_response(e)
        return JSONResponse(err.body, status_code=503, headers=err.headers)
    return JSONResponse({"status": status})


def ops_router(
    health: Check | None = None,
    ready: Check | None = None,
    metrics: Callable[[], Awaitable[bytes]] | None = None,
    metrics_key: str | None = None,
) -> APIRouter:
    """The routes for the callables given (a missing health check always answers ok).
    /metrics needs `metrics_key` as Bearer when one is given: it tells load, names and
    counts; /health and /ready say only up or not, for probes that carry no key."""
    router = APIRouter(tags=["operations"])

    @router.get("/health", responses={503: {"description": "The process cannot serve"}})
    async def get_health() -> Response:
        return _answer(health, "ok")

    if ready is not None:
        is_ready = ready

        @router.get("/ready", responses={503: {"description": "Takes no new requests now"}})
        async def get_ready() -> Response:
            return _answer(is_ready, "ready")

    if metrics is not None:
        render = metrics

        @router.get("/metrics", response_class=Response)
        async def get_metrics(request: Request) -> Response:
            check_bearer(request.headers.get("authorization", ""), metrics_key)
            return Response(await render(), media_type=METRICS_MEDIA_TYPE)

    return router
