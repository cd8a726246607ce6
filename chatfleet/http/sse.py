"""Server-sent events as OpenAI streams them: `data: <json>` events, `data: [DONE]` last.

Writing: `event`, `error_event`, `DONE`, and `KEEP_ALIVE` comments, which a server sends
whenever a stream has been silent for an interval (`paced`; proxies cut idle connections, and
every SSE reader skips comment lines) and every relay passes on. Reading: `data_of` for one
line, `aiter_data` for a stream of lines, `EventSplitter` for a byte relay that must never
tear an event.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from typing import Any, TypeVar

import anyio

from chatfleet.http.http_errors import to_error_response

T = TypeVar("T")

DONE = "data: [DONE]\n\n"
_CLOSE_WAIT_S = 5.0  # how long closing a paced stream waits for its source to stop
KEEP_ALIVE = ": keep-alive\n\n"


def data_event(payload: str) -> str:
    """One event whose data is `payload` (one line) as is."""
    return f"data: {payload}\n\n"


# Characters that str.splitlines() and clients built on it (httpx's iter_lines) take for line
# breaks, though SSE does not: raw in a `data:` line they cut the event in two.
_LINE_BREAKS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def event(obj: Any) -> str:
    """One `data:` event carrying `obj` as JSON (UTF-8 kept as is, but for the characters
    some clients split lines on, which are escaped)."""
    return data_event(json.dumps(obj, ensure_ascii=False).translate(_LINE_BREAKS))


def error_event(exc: BaseException) -> str:
    """The OpenAI-shaped error object of `exc` as an event (the openai SDK raises on it)."""
    return event(to_error_response(exc).body)


async def paced(
    source: AsyncIterator[T], idle_s: float, deadline: float | None = None
) -> AsyncGenerator[T | None, None]:
    """The items of `source`, with None after every `idle_s` that passes without one.

    Raises TimeoutError once time.monotonic() passes `deadline`. `source` is not closed here:
    its owner closes it.
    """
    pending: asyncio.Future[T] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(source))
            timeout = idle_s
            if deadline is not None:
                timeout = min(timeout, deadline - time.monotonic())
                if timeout <= 0:
                    raise TimeoutError("the stream passed its deadline")
            done, _ = await asyncio.wait({pending}, timeout=timeout)
            if not done:
                if deadline is None or time.monotonic() < deadline:
                    yield None
                continue
            task, pending = pending, None
            try:
                item = task.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            # NOTE: waited for (shielded: the caller may itself be cancelled, as when a client
            # leaves) so that the source no longer runs when its owner closes it, which is
            # what aborts the engine requests behind it.
            with anyio.CancelScope(shield=True):
                await asyncio.wait({pending}, timeout=_CLOSE_WAIT_S)


def data_of(line: str) -> str | None:
    """The payload of an SSE `data:` line; None for any other line (comments, blanks)."""
    if not line.startswith("data:"):
        return None
    return line[5:].removeprefix(" ")


async def aiter_data(lines: AsyncIterable[str]) -> AsyncIterator[str | None]:
    """The payload of each event's data lines (joined by newlines), `[DONE]` included; None
    for each comment line (a keep-alive), so a relay can pass it on."""
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
        elif (payload := data_of(line)) is not None:
            data.append(payload)
        elif line.startswith(":"):
            yield None
    if data:
        yield "\n".join(data)


class EventSplitter:
    """Cuts a byte stream at event boundaries: `feed` returns the complete events so far and
    holds the start of an event whose blank line has not arrived yet."""

    def __init__(self) -> None:
        self.pending = b""

    def feed(self, chunk: bytes) -> bytes:
        self.pending += chunk
        cut = self.pending.rfind(b"\n\n") + 2
        if cut < 2:
            return b""
        complete, self.pending = self.pending[:cut], self.pending[cut:]
        return complete

    def flush(self) -> bytes:
        rest, self.pending = self.pending, b""
        return rest
