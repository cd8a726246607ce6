"""Bad input: the right 4xx in OpenAI's error shape, and the server stays healthy."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.server_process import start_server

pytestmark = pytest.mark.e2e  # starts its own servers

MSG = [{"role": "user", "content": "hi"}]


TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def _chat(**fields):
    return json.dumps({"model": "SmolLM2-135M-Instruct", "messages": MSG, **fields})


CASES = [
    ("malformed json", b'{"messages": [', 400, None),
    ("array body", b"[1, 2, 3]", 400, None),
    ("missing messages", b'{"model": "SmolLM2-135M-Instruct"}', 400, "messages"),
    ("empty messages", _chat(messages=[]).encode(), 400, "messages"),
    ("unknown role", _chat(messages=[{"role": "wizard", "content": "x"}]).encode(), 400, None),
    (
        "non-string content",
        _chat(messages=[{"role": "user", "content": 5}]).encode(),
        400,
        "messages.0.content",
    ),
    ("temperature a string", _chat(temperature="hot"), 400, "temperature"),
    ("top_logprobs over 20", _chat(logprobs=True, top_logprobs=21), 400, "top_logprobs"),
    ("unknown model", _chat(model="gpt-99").encode(), 404, "model"),
    ("max_tokens huge", _chat(max_tokens=10**9).encode(), 400, "max_tokens"),
    ("max_tokens zero", _chat(max_tokens=0).encode(), 400, "max_tokens"),
    # The error names the field the client sent, not the engine's name for it.
    (
        "max_completion_tokens huge",
        _chat(max_completion_tokens=10**9).encode(),
        400,
        "max_completion_tokens",
    ),
    (
        "max_completion_tokens zero",
        _chat(max_completion_tokens=0).encode(),
        400,
        "max_completion_tokens",
    ),
    (
        "messages over context",
        _chat(messages=[{"role": "user", "content": "hello " * 9000}], max_tokens=5).encode(),
        400,
        "messages",
    ),
    ("temperature -1", _chat(temperature=-1).encode(), 400, "temperature"),
    (
        "temperature NaN",
        b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
        400,
        "temperature",
    ),
    (
        "temperature Infinity",
        b'{"messages": [{"role": "user", "content": "hi"}], "temperature": Infinity}',
        400,
        "temperature",
    ),
    ("top_p 2", _chat(top_p=2).encode(), 400, "top_p"),
    ("n 1000", _chat(n=1000).encode(), 400, "n"),
    ("5 stop strings", _chat(stop=["a", "b", "c", "d", "e"]).encode(), 400, "stop"),
    ("empty stop string", _chat(stop=[""]).encode(), 400, "stop"),
    (
        "stream_options without stream",
        _chat(stream_options={"include_usage": True}).encode(),
        400,
        "stream_options",
    ),
    ("a field not implemented", _chat(functions=[{"name": "f"}]).encode(), 400, "functions"),
    (
        "an image part",
        _chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
        400,
        "messages.0.content.0.type",
    ),
    (
        "json_schema without a schema",
        _chat(response_format={"type": "json_schema", "json_schema": {"name": "x"}}),
        400,
        "response_format.json_schema",
    ),
    (
        "a schema that cannot be enforced",
        _chat(
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "wizard"}, "strict": True},
            }
        ),
        400,
        "response_format.json_schema.schema",
    ),
    ("tool_choice without tools", _chat(tool_choice="required"), 400, "tool_choice"),
    (
        "tool_choice naming no tool",
        _chat(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "nope"}}),
        400,
        "tool_choice",
    ),
    (
        "a tool name with a space",
        _chat(tools=[{"type": "function", "function": {"name": "get weather"}}]),
        400,
        "tools.0.function.name",
    ),
    ("logit_bias over 100", _chat(logit_bias={"42": 101}), 400, "logit_bias"),
    ("logit_bias key not an id", _chat(logit_bias={"hello": 1}), 400, "logit_bias"),
    ("logit_bias id past the vocabulary", _chat(logit_bias={"99999999": 1}), 400, "logit_bias"),
    ("invalid utf-8", b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', 400, None),
    ("lone surrogate", b'{"messages": [{"role": "user", "content": "\\ud800"}]}', 400, None),
    ("deeply nested", b'{"messages": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, None),
]


@pytest.mark.parametrize(("name", "body", "status", "param"), CASES, ids=[c[0] for c in CASES])
def test_bad_chat_input(server, name, body, status, param):
    r = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["type"] == "invalid_request_error"
    if param is not None:
        assert err["param"] == param, err
    assert httpx.get(f"{server.base_url}/health", timeout=10).status_code == 200


def test_prompt_over_context(server):
    long_text = "hello " * 9000
    r = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": long_text}]},
        timeout=60,
    )
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"


def test_body_over_size_limit_is_413(server):
    body = _chat(messages=[{"role": "user", "content": "x" * (5 << 20)}]).encode()
    r = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        content=body,
        timeout=60,
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"


def test_completion_bad_input(server):
    r = httpx.post(f"{server.base_url}/v1/completions", json={"prompt": []}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    r = httpx.post(f"{server.base_url}/v1/completions", json={"prompt": [10**8]}, timeout=30)
    assert r.status_code == 400
    # Echo decodes the prompt before the engine checks it: an id past any integer type.
    for prompt in ([169756660467], [[5, -1]]):
        body = {"prompt": prompt, "echo": True}
        r = httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompt", r.text


def test_unknown_route_is_openai_shaped_404(server):
    r = httpx.get(f"{server.base_url}/v1/nothing", timeout=10)
    assert r.status_code == 404 and "error" in r.json()


def test_openapi_lists_every_status(server):
    spec = httpx.get(f"{server.base_url}/openapi.json", timeout=10).json()
    codes = set(spec["paths"]["/v1/chat/completions"]["post"]["responses"])
    assert {"200", "400", "401", "404", "413", "500", "503", "504"} <= codes


def test_api_key_required_when_set(tmp_path):
    srv = start_server(tmp_path, "--api-key", "sekret")
    try:
        url = f"{srv.base_url}/v1/chat/completions"
        r = httpx.post(
            url,
            json={"messages": MSG, "max_tokens": 2},
            timeout=30,
            headers={"authorization": "Bearer wrong"},
        )
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.post(url, json={"messages": MSG}, timeout=30).status_code == 401
        ok = httpx.post(
            url,
            json={"messages": MSG, "max_tokens": 2},
            timeout=60,
            headers={"authorization": "Bearer sekret"},
        )
        assert ok.status_code == 200
    finally:
        assert srv.stop() == 0
