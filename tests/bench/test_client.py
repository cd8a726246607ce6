"""SSE parsing: content chunks are timed, usage is read, error events are recorded."""

from __future__ import annotations

import json

from chatfleet.bench.client import ClientConfig, StreamState


def _data(obj) -> str:
    return "data: " + json.dumps(obj)


def test_stream_state_times_content_and_reads_usage():
    state = StreamState(start=10.0)
    role = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
    lines = [
        (_data(role), 10.1),
        ("", 10.1),
        (_data({"choices": [{"index": 0, "delta": {"content": "Hel"}}]}), 10.5),
        (": keep-alive comment", 10.6),
        (_data({"choices": [{"index": 0, "delta": {"content": "lo"}}], "usage": None}), 10.75),
        (_data({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}}), 10.8),
        ("data: [DONE]", 10.8),
    ]
    for line, now in lines:
        state.feed(line, now)
    assert state.chunk_times_s == [0.5, 0.75]  # the empty role chunk is not content
    assert "".join(state.text_parts) == "Hello"
    assert state.usage == {"prompt_tokens": 7, "completion_tokens": 2}
    assert state.is_done and state.error_type is None


def test_stream_state_records_an_error_event():
    state = StreamState(start=0.0)
    err = {"error": {"message": "timed out", "type": "server_error", "code": "request_timeout"}}
    state.feed(_data(err), 1.0)
    assert (state.error_type, state.error_message) == ("request_timeout", "timed out")


def test_client_config_accepts_a_base_url_with_or_without_v1():
    assert ClientConfig("http://h:1").api_url == "http://h:1/v1"
    assert ClientConfig("http://h:1/v1/").api_url == "http://h:1/v1"
    assert ClientConfig("http://h:1", api_key="k").headers == {"Authorization": "Bearer k"}
