"""Router: picks a replica per request and forwards it, streaming the answer through.

    client --> Router.forward --> policy.choose(snapshot) --> replica
                  ^  refused / failed before the first byte: next replica (bounded)
                  +-- 429, 502, 503, a dead engine's 500, connection errors, and a
                      stream whose headers miss its token deadline (a hung replica)

Any other 4xx/5xx is the request's own and is passed on, counted against no replica. A
stream must bring a token (keep-alive comments do not count) every `token_timeout_s`: a replica
that misses it is ejected at once.

A non-streamed answer is read whole before it is passed on, so a replica failing part-way is
retried like one failing before its first byte. A request waiting on a replica that the pool
ejects (its probes or other requests found it dead or hung) stops waiting: until its first
byte it goes to another replica, and a resumable stream resumes elsewhere. A stream is
relayed as it arrives (relay.py); if its replica fails mid-stream, a resumable one continues
on another replica, and any other ends with an SSE `error` event and `[DONE]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from asyncio import FIRST_COMPLETED
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import httpx
from fastapi.responses import Response

from chatfleet.config.router_config import RouterConfig
from chatfleet.http.http_client import make_async_client
from chatfleet.http.http_errors import (
    NoReplicaError,
    ReplicaHungError,
    error_json,
)
from chatfleet.http.streaming import ClosingStreamingResponse
from chatfleet.router.health import HealthChecker
from chatfleet.router.policies import make_policy
from chatfleet.router.pool import ReplicaPool
from chatfleet.router.prefix_index import PrefixIndex, route_request
from chatfleet.router.relay import Relay, ReplicaEjectedError, Resumption, Upstream, before
from chatfleet.router.router_metrics import RouterMetrics
from chatfleet.router.session import session_key
from chatfleet.router.snapshot import RouteRequest
from chatfleet.router.stream_ledger import EXTENSIONS, StreamLedger, resumable, strip_extensions

logger = logging.getLogger("chatfleet.router")

# Not forwarded in either direction (RFC 9110 7.6.1), plus what httpx/uvicorn recompute.
_HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "date",  # uvicorn sets its own date and server
        "server",
    }
)
_RETRY_STATUSES = frozenset({429, 500, 502, 503})
REPLICA_HEADER = "x-chatfleet-replica"
T = TypeVar("T")


@dataclass(frozen=True)
class _Retry:
    reason: str  # for the retries metric
    response: Response | None = None  # what the client gets if no other replica can serve


def _forward_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in _HOP_HEADERS}


def _error_code(body: bytes) -> str | None:
    try:
        error = json.loads(body).get("error") or {}
        return error.get("code") if isinstance(error, dict) else None
    except (ValueError, AttributeError):
        return None


class Router:
    """Owns the pool, the policy, the prefix index, the metrics and the HTTP client.

    `start()` opens the client, probes every replica once and starts probing in the
    background; `close()` stops both. Add replicas with `pool.add(url)`.
    """

    def __init__(self, config: RouterConfig, replica_urls: list[str] | None = None) -> None:
        self.config = config
        self.policy = make_policy(config.policy)
        self.pool = ReplicaPool(config.health, on_event=self._on_health_event)
        self.index = PrefixIndex(config.prefix.max_blocks_per_replica)
        self.metrics = RouterMetrics(self.pool)
        self._seq = itertools.count()
        self._client: httpx.AsyncClient | None = None
        self._probe_task: asyncio.Task | None = None
        # Per replica, a future done when it is ejected: what requests waiting on it watch.
        self._ejections: dict[str, asyncio.Future[None]] = {}
        for url in replica_urls or []:
            self.pool.add(url.rstrip("/"))

    @property
    def client(self) -> httpx.AsyncClient:
        assert self._client is not None, "Router.start() first"
        return self._client

    async def start(self) -> None:
        p = self.config.proxy
        self._client = make_async_client(
            p.connect_timeout_s,
            p.read_timeout_s,
            p.max_connections,
            max_keepalive_connections=256,
            api_key=self.config.api_key,
        )
        checker = HealthChecker(self.pool, self.config.health, self._client)
        await checker.probe_all()
        self._probe_task = asyncio.create_task(checker.run())

    async def close(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
        if self._client is not None:
            await self._client.aclose()

    def forget(self, replica_id: str) -> None:
        """The replica's KV cache is gone (ejected, restarted, removed): unlearn its prefixes;
        requests still waiting on it stop waiting (`until`)."""
        self.index.forget_replica(replica_id)
        ejection = self._ejections.pop(replica_id, None)
        if ejection is not None and not ejection.done():
            ejection.set_result(None)

    def _ejection(self, replica_id: str) -> asyncio.Future[None]:
        """The future done once the replica is ejected (already done if it is now)."""
        ejection = self._ejections.get(replica_id)
        if ejection is None:
            ejection = asyncio.get_running_loop().create_future()
            state = self.pool.state(replica_id)
            if state is None or state.is_ejected:
                ejection.set_result(None)
            else:
                self._ejections[replica_id] = ejection
        return ejection

    async def until(self, rid: str | None, due: float | None, step: Awaitable[T]) -> T:
        """`step`'s result; TimeoutError if time.monotonic() passes `due` first (None: no
        deadline), ReplicaEjectedError if replica `rid` is ejected first (None: not watched).

        NOTE: a hung replica holds its connections open: without this, a request on it would
        wait for the read timeout although its probes had it ejected in seconds. Callers watch
        only what can move without the client seeing a break (a request before its first
        byte, a non-streamed one, a resumable stream); a replica ejected for slow probes
        alone then costs the work done on it, never the client's answer."""
        if rid is None:
            return await before(due, step)
        task: asyncio.Future[T] = asyncio.ensure_future(step)
        ejection = self._ejection(rid)
        timeout_s = None if due is None else max(due - time.monotonic(), 0.0)
        try:
            waits: set[asyncio.Future[Any]] = {task, ejection}
            await asyncio.wait(waits, timeout=timeout_s, return_when=FIRST_COMPLETED)
            if task.done():
                return task.result()
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if ejection.done():
            raise ReplicaEjectedError(rid)
        raise TimeoutError

    def _on_health_event(self, event: str, replica_id: str) -> None:
        logger.warning("replica %s %s", replica_id, event)
        if event == "ejected":
            self.metrics.ejections.labels(replica_id).inc()
            self.forget(replica_id)
        elif event == "readmitted":
            self.metrics.readmissions.labels(replica_id).inc()

    def route_request(self, payload: Any, headers: Mapping[str, str]) -> tuple[RouteRequest, list]:
        """The policy's view of a request, and its prompt's block hashes."""
        session = session_key(payload, headers, self.config.proxy.session_header)
        return route_request(payload, next(self._seq), self.index, self.config.prefix, session)

    async def forward(
        self, method: str, path: str, body: bytes, headers: Mapping[str, str], payload: Any
    ) -> Response:
        """Send the request to replicas chosen by the policy until one accepts it.

        Returns the first accepted response (streamed); when every attempt was refused, the
        last refusal (429/503 with its Retry-After) or a 503 NoReplicaError.
        """
        request, hashes = self.route_request(payload, headers)
        is_stream = isinstance(payload, dict) and payload.get("stream") is True
        deadline = time.monotonic() + self.config.proxy.retry_deadline_s
        fwd_headers = _forward_headers(headers)
        tried: list[str] = []
        if isinstance(payload, dict) and any(k in payload for k in EXTENSIONS):
            payload = strip_extensions(payload)
            body = json.dumps(payload).encode()
        resumption = None
        if self.config.proxy.max_resumptions > 0 and resumable(path, payload):
            payload = {**payload, "chatfleet_token_ids": True}
            body = json.dumps(payload).encode()
            ledger = StreamLedger(payload)
            budget = self.config.proxy.max_resumptions
            resumption = Resumption(ledger, request, method, path, fwd_headers, tried, budget)
        last: _Retry | None = None
        for _ in range(self.config.proxy.max_attempts):
            replicas = self.pool.snapshot(exclude=tried)
            if not replicas or time.monotonic() > deadline:
                break
            decision = self.policy.choose(request, replicas)
            rid = decision.replica_id
            self.metrics.decisions.labels(self.policy.name, decision.reason).inc()
            if last is not None:
                self.metrics.retries.labels(last.reason).inc()
            if not tried:
                self.metrics.prefix_query_blocks.inc(request.num_prefix_blocks)
                self.metrics.prefix_hit_blocks.inc(request.matched_blocks.get(rid, 0))
            tried.append(rid)
            self.index.insert(hashes, rid)
            outcome = await self._attempt(
                rid, method, path, body, fwd_headers, is_stream, resumption
            )
            if isinstance(outcome, Response):
                self.metrics.requests.labels(str(outcome.status_code)).inc()
                return outcome
            last = outcome
        if last is not None and last.response is not None:
            self.metrics.requests.labels(str(last.response.status_code)).inc()
            return last.response
        self.metrics.requests.labels("503").inc()
        reason = "every replica refused or failed" if tried else "no healthy replica"
        raise NoReplicaError(f"{reason}; retry later", retry_after_s=1)

    async def _attempt(
        self,
        rid: str,
        method: str,
        path: str,
        body: bytes,
        headers: dict[str, str],
        stream: bool,
        resumption: Resumption | None,
    ) -> Response | _Retry:
        """One try on one replica: a Response to return, or a _Retry to try elsewhere."""
        opened = await self._open(rid, method, path, body, headers, stream)
        if not isinstance(opened, Upstream):
            return opened
        if not stream:  # read whole: a failure part-way is retried like any other
            rest = []
            try:
                while (
                    chunk := await self.until(rid, None, anext(opened.chunks, None))
                ) is not None:
                    rest.append(chunk)
            except (httpx.HTTPError, ReplicaEjectedError) as e:
                if isinstance(e, httpx.HTTPError):
                    self.pool.record_failure(rid, time.monotonic())
                return _Retry(type(e).__name__)
            finally:
                await self._close(rid, opened.response)
            response_headers = _forward_headers(opened.response.headers)
            response_headers[REPLICA_HEADER] = rid
            content = b"".join([opened.first or b"", *rest])
            return Response(content, opened.response.status_code, response_headers)
        relay = Relay(self, opened, resumption)
        response_headers = _forward_headers(opened.response.headers)
        response_headers[REPLICA_HEADER] = rid
        return ClosingStreamingResponse(
            relay.body(),
            opened.response.status_code,
            response_headers,
            media_type=None,
            on_close=[relay.close],
        )

    async def _open(
        self, rid: str, method: str, path: str, body: bytes, headers: dict[str, str], stream: bool
    ) -> Upstream | Response | _Retry:
        """Sends the request to one replica: its accepted response with the first chunk read
        (a stream's first token), a refusal to pass on, or a _Retry to try elsewhere."""
        self.pool.acquire(rid)
        self.metrics.routed.labels(rid).inc()
        upstream: httpx.Response | None = None
        content, first = b"", None
        # A stream's first token is due within token_timeout_s of sending (its headers too).
        due = time.monotonic() + self.config.proxy.token_timeout_s if stream else None
        try:
            req = self.client.build_request(method, rid + path, content=body, headers=headers)
            upstream = await self.until(rid, due, self.client.send(req, stream=True))
            if upstream.status_code >= 400:
                content = await self.until(rid, due, upstream.aread())
            else:
                chunks = upstream.aiter_raw()
                first = await self.until(rid, due, anext(chunks, None))
        except (httpx.HTTPError, TimeoutError, ReplicaEjectedError) as e:
            # No byte reached the client: try elsewhere.
            await self._close(rid, upstream)
            if isinstance(e, TimeoutError):
                self._hung(rid)
                return _Retry("replica_timeout", error_json(ReplicaHungError("no token in time")))
            if isinstance(e, httpx.HTTPError):
                self.pool.record_failure(rid, time.monotonic())
            return _Retry(type(e).__name__)
        except BaseException:  # cancelled (the client left): the replica must stop too
            await self._close(rid, upstream)
            raise
        if upstream.status_code >= 400:
            await self._close(rid, upstream)
            return self._refusal(rid, upstream, content)
        self.pool.record_success(rid)
        return Upstream(rid, upstream, first, chunks, due)

    async def reopen(self, r: Resumption, body: bytes) -> Upstream | None:
        """A resumed stream's continuation, sent to replicas it has not been on until one
        accepts it; None if none does."""
        deadline = time.monotonic() + self.config.proxy.retry_deadline_s
        for _ in range(self.config.proxy.max_attempts):
            replicas = self.pool.snapshot(exclude=r.tried)
            if not replicas or time.monotonic() > deadline:
                return None
            rid = self.policy.choose(r.request, replicas).replica_id
            r.tried.append(rid)
            opened = await self._open(rid, r.method, r.path, body, r.headers, stream=True)
            if isinstance(opened, Upstream):
                return opened
            if isinstance(opened, Response):  # refused for the request's own reasons
                logger.warning("replica %s refused a stream's continuation: %s", rid, opened.body)
                return None
        return None

    def _hung(self, rid: str) -> None:
        logger.warning(
            "replica %s sent no token in %g s: ejected", rid, self.config.proxy.token_timeout_s
        )
        self.metrics.stream_errors.labels(rid).inc()
        self.pool.record_hang(rid, time.monotonic())

    def _refusal(self, rid: str, upstream: httpx.Response, content: bytes) -> Response | _Retry:
        """A 4xx/5xx answer: passed on, or a reason to try elsewhere (429, 502, 503, and a
        500 from a dead engine: the replica's failures, not the request's)."""
        status = upstream.status_code
        headers = _forward_headers(upstream.headers)
        headers[REPLICA_HEADER] = rid
        response = Response(content, status, headers=headers)
        code = _error_code(content)
        # NOTE: any other 500 is the request's own (an input that trips a bug): another
        # replica would fail it the same way, and counting it would eject healthy replicas.
        if status not in _RETRY_STATUSES or (status == 500 and code != "engine_dead"):
            if status < 500:
                self.pool.record_success(rid)  # the replica works; the request was bad
            return response
        if status == 503 and code == "shutting_down":
            self.pool.mark_draining(rid)
        elif status in (500, 502):
            self.pool.record_failure(rid, time.monotonic())
        return _Retry(f"status_{status}", response)

    async def _close(self, rid: str, upstream: httpx.Response | None) -> None:
        """Close the upstream response (if any) and give back the in-flight slot."""
        # NOTE: shielded: on a client disconnect this runs inside a cancelled scope, and an
        # upstream left open would keep the replica generating for nobody.
        if upstream is not None:
            with anyio.CancelScope(shield=True):
                await upstream.aclose()
        self.pool.release(rid)
