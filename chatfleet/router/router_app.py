"""The router's HTTP front: /v1/* proxied through the Router, plus its own health and metrics.

POST /v1/chat/completions, /v1/completions   routed by the policy, streamed through
GET  /v1/models, /v1/models/{id}             from any eligible replica
GET  /health                                 200 while the router process runs
GET  /ready                                  200 when at least one replica is eligible
GET  /metrics                                the router's Prometheus metrics
GET  /router/replicas                        each replica's state (and its process, if managed)
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response

from chatfleet.http.body import read_body
from chatfleet.http.handlers import new_app, unless_disconnected
from chatfleet.http.http_errors import NoReplicaError, check_bearer
from chatfleet.http.ops_routes import ops_router
from chatfleet.router.forwarder import Router
from chatfleet.router.replica_manager import ReplicaManager


def replicas_json(router: Router, manager: ReplicaManager | None) -> list[dict[str, Any]]:
    processes = {info.url: info for info in manager.list()} if manager is not None else {}
    out = []
    for s in router.pool.states():
        item: dict[str, Any] = {
            "url": s.replica_id,
            "eligible": s.is_eligible,
            "draining": s.is_draining,
            "retiring": s.is_retiring,
            "ejected": s.is_ejected,
            "num_in_flight": s.num_in_flight,
            "num_routed": s.num_routed,
            "num_ejections": s.num_ejections,
            "consecutive_failures": s.consecutive_failures,
            "num_waiting": s.load.num_waiting,
            "kv_cache_usage": s.load.kv_cache_usage,
            "prefix_cache_queries": s.load.prefix_cache_queries,
            "prefix_cache_hits": s.load.prefix_cache_hits,
        }
        info = processes.get(s.replica_id)
        if info is not None:
            item.update(pid=info.pid, status=info.status, num_restarts=info.num_restarts)
        out.append(item)
    return out


def build_router_app(router: Router, manager: ReplicaManager | None = None) -> FastAPI:
    """The FastAPI app; its lifespan starts and closes `router` (not `manager`)."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await router.start()
        try:
            yield
        finally:
            await router.close()

    app = new_app("chatfleet router", lifespan)
    app.state.router = router
    limit = router.config.proxy.max_body_bytes
    key = router.config.api_key

    async def authorized(request: Request) -> None:
        check_bearer(request.headers.get("authorization", ""), key)

    guarded = APIRouter(dependencies=[Depends(authorized)])

    async def proxy(request: Request) -> Response:
        body = await read_body(request, limit, router.config.http.body_timeout_s)
        try:
            payload = json.loads(body) if body else None
        except (ValueError, RecursionError):  # routed by load alone; the replica gives the 400
            payload = None
        work = router.forward(request.method, request.url.path, body, request.headers, payload)
        return await unless_disconnected(request, work)

    guarded.add_api_route("/v1/chat/completions", proxy, methods=["POST"])
    guarded.add_api_route("/v1/completions", proxy, methods=["POST"])
    guarded.add_api_route("/v1/models", proxy, methods=["GET"])
    guarded.add_api_route("/v1/models/{model_id:path}", proxy, methods=["GET"])

    def ready() -> None:
        if not router.pool.snapshot():
            raise NoReplicaError("no eligible replica", retry_after_s=1)

    async def metrics() -> bytes:
        return router.metrics.render()

    app.include_router(ops_router(None, ready, metrics, key))

    @guarded.get("/router/replicas")
    async def replicas() -> dict[str, Any]:
        return {"policy": router.policy.name, "replicas": replicas_json(router, manager)}

    app.include_router(guarded)
    return app
