"""What crosses the Ray boundary: one generate call, and the routing keys of its HTTP request.

The ingress reads the routing keys (the JSON body, the session key) once per HTTP request in
`RouteKeysMiddleware`; `RayEngineClient.generate` attaches them to every `GenerateCall`, so
the request router inside the deployment handle sees the same inputs the local router does.
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from chatfleet.router.session import session_key
from chatfleet.sampling_params import SamplingParams

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True)
class RouteKeys:
    """The routing inputs of one HTTP request (see router.prefix_index.route_request)."""

    payload: Any = None  # the parsed JSON body; None when it was not JSON
    session_key: str | None = None


@dataclass(frozen=True)
class GenerateCall:
    """The arguments of EngineReplica.generate, in one picklable object."""

    prompt: str | list[int]
    params: SamplingParams
    request_id: str
    priority: int = 0
    route: RouteKeys = RouteKeys()


# Set by the middleware for the duration of one HTTP request; asyncio tasks the route
# starts (one per choice) copy it.
NO_ROUTE_KEYS = RouteKeys()
ROUTE_KEYS: contextvars.ContextVar[RouteKeys] = contextvars.ContextVar(
    "chatfleet_route_keys", default=NO_ROUTE_KEYS
)


class RouteKeysMiddleware:
    """ASGI middleware: buffers a POST body (up to `max_body_bytes`), sets ROUTE_KEYS from it
    and the headers, and replays the body to the app unchanged (the app still enforces its
    own limits and reports bad JSON)."""

    def __init__(self, app: Any, max_body_bytes: int, session_header: str) -> None:
        self.app, self.max_body_bytes, self.session_header = app, max_body_bytes, session_header

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        size, more = 0, True
        while more and size <= self.max_body_bytes:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            more = bool(message.get("more_body", False))
        payload = None if more else _loads(b"".join(m.get("body", b"") for m in messages))
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        keys = RouteKeys(payload, session_key(payload, headers, self.session_header))
        pending = iter(messages)

        async def replay() -> Message:
            message = next(pending, None)
            return message if message is not None else await receive()

        token = ROUTE_KEYS.set(keys)
        try:
            await self.app(scope, replay, send)
        finally:
            ROUTE_KEYS.reset(token)


def _loads(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None
