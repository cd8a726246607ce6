"""A streamed response that always cleans up after itself.

Starlette iterates a StreamingResponse's body only once the headers are sent; a client that
left before that (while its request waited in a queue, say) cancels the response before the
body starts, so neither the body generator's `finally` nor anything wrapped around it runs.
Every streamed response of the fronts is a ClosingStreamingResponse: when it ends, however
it ends, its body is closed and its close callbacks run (release a slot, abort the engine
requests, close the upstream connection), shielded from the cancellation that ended it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import anyio
from fastapi.responses import StreamingResponse

CloseCallback = Callable[[], Awaitable[None]]


class ClosingStreamingResponse(StreamingResponse):
    def __init__(
        self,
        content: Any,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = "text/event-stream",
        on_close: Iterable[CloseCallback] = (),
    ) -> None:
        super().__init__(content, status_code, headers=headers, media_type=media_type)
        self.close_callbacks: list[CloseCallback] = list(on_close)

    def on_close(self, callback: CloseCallback) -> None:
        """Run `callback` once the response has ended (after the body is closed)."""
        self.close_callbacks.append(callback)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                aclose = getattr(self.body_iterator, "aclose", None)
                if aclose is not None:
                    await aclose()
                for callback in self.close_callbacks:
                    await callback()
