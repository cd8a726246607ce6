"""SSE writing and reading: keep-alive pacing, event splitting, data lines."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from chatfleet.http import sse
from chatfleet.http.http_errors import ReplicaFailedError


async def _slow(delays: list[float]):
    for i, delay in enumerate(delays):
        await asyncio.sleep(delay)
        yield i


def test_paced_marks_each_silent_interval_and_keeps_the_items():
    async def run() -> list:
        return [x async for x in sse.paced(_slow([0.0, 0.25, 0.0]), idle_s=0.1)]

    out = asyncio.run(run())
    assert [x for x in out if x is not None] == [0, 1, 2]
    assert out[0] == 0 and out.count(None) == 2 and out[1:3] == [None, None]


def test_paced_raises_at_the_deadline():
    async def run() -> None:
        async for _ in sse.paced(_slow([0.0, 5.0]), idle_s=0.05, deadline=time.monotonic() + 0.2):
            pass

    started = time.monotonic()
    with pytest.raises(TimeoutError):
        asyncio.run(run())
    assert time.monotonic() - started < 2


def test_splitter_never_tears_an_event():
    splitter = sse.EventSplitter()
    assert splitter.feed(b'data: {"a"') == b""
    assert splitter.feed(b": 1}\n\ndata: [DO") == b'data: {"a": 1}\n\n'
    assert splitter.feed(b"NE]\n\n") == b"data: [DONE]\n\n"
    assert splitter.feed(b"data: x") == b"" and splitter.flush() == b"data: x"


def test_reader_joins_data_lines_and_reports_comments():
    async def lines():
        for line in ["data: a", "data: b", "", ": keep-alive", "", "event: x", "data: [DONE]"]:
            yield line

    async def run() -> list:
        return [x async for x in sse.aiter_data(lines())]

    assert asyncio.run(run()) == ["a\nb", None, "[DONE]"]


def test_error_event_has_the_openai_error_shape():
    event = sse.error_event(ReplicaFailedError("gone"))
    body = json.loads(event.removeprefix("data: "))
    assert body == {
        "error": {
            "message": "gone",
            "type": "server_error",
            "param": None,
            "code": "replica_failed",
        }
    }
    assert event.endswith("\n\n") and sse.DONE == "data: [DONE]\n\n"


def test_an_event_stays_one_line_for_clients_that_split_on_unicode_line_breaks():
    """httpx's iter_lines (like str.splitlines) breaks at U+2028, U+2029 and U+0085; a model
    can sample them, and a raw one cut the event's JSON in two."""
    text = "a\u2028b\u2029c\x85d"
    lines = sse.event({"content": text}).splitlines()
    assert lines[1:] == [""] and json.loads(lines[0].removeprefix("data: ")) == {"content": text}
