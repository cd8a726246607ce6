"""Several engine streams (one per prompt of a /v1/completions request) as one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator

from chatfleet.outputs import RequestOutput

Merged = AsyncGenerator[tuple[int, RequestOutput], None]


async def merge_streams(gens: list[AsyncIterator[RequestOutput]]) -> Merged:
    """Interleave several engine streams; closing the merge aborts every unfinished one."""
    if len(gens) == 1:
        async with contextlib.aclosing(gens[0]) as g:  # type: ignore[type-var]
            async for out in g:
                yield 0, out
        return
    queue: asyncio.Queue[tuple[int, RequestOutput | BaseException | None]] = asyncio.Queue()

    async def pump(i: int, gen: AsyncIterator[RequestOutput]) -> None:
        try:
            async for out in gen:
                queue.put_nowait((i, out))
            queue.put_nowait((i, None))
        except Exception as e:
            queue.put_nowait((i, e))

    tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(gens)]
    try:
        remaining = len(gens)
        while remaining:
            i, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
