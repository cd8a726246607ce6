"""Tools and structured output through the gateway: the fields reach the engine, a client
that wants one body gets the tool calls the stream carried, the calls are billed, and a
conversation with tools streams, stores and resends its calls."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

from tests.gateway.conftest import (
    auth,
    get_conversation,
    make_key,
    new_conversation,
    say,
    usage_row,
)
from tests.server.test_structured_api import ADD, ASK, PARAMETERS, WEATHER, one_required_call
from tests.server_process import wait_until


def test_tool_calls_and_schemas_pass_through_and_are_billed(gateway_factory, sqlite_url):
    key = make_key(sqlite_url, "alice")
    gw = gateway_factory(sqlite_url)
    client = openai.OpenAI(base_url=f"{gw.base_url}/v1", api_key=key, max_retries=0)
    r = one_required_call(client, [WEATHER, ADD])
    schema = PARAMETERS["get_weather"]
    fmt = {"type": "json_schema", "json_schema": {"name": "w", "schema": schema, "strict": True}}
    stream = client.chat.completions.create(
        model="SmolLM2-135M-Instruct",
        messages=ASK,
        response_format=fmt,
        max_tokens=60,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    jsonschema.validate(json.loads(text), schema)
    billed = usage_row(gw.base_url, key)
    assert billed["num_requests"] == 2
    assert (
        billed["completion_tokens"]
        == r.usage.completion_tokens + chunks[-1].usage.completion_tokens
    )


def test_tools_count_toward_the_token_reservation(gateway_factory, sqlite_url):
    """Tools are written into the prompt, so a key's token limit sees them: the same question
    fits a 300-token minute alone and is too large with a long tool description."""
    key = make_key(sqlite_url, "bob", tpm=300)
    gw = gateway_factory(sqlite_url)
    client = openai.OpenAI(base_url=f"{gw.base_url}/v1", api_key=key, max_retries=0)
    ask = {"model": "SmolLM2-135M-Instruct", "messages": ASK, "max_tokens": 8}
    assert client.chat.completions.create(**ask).usage.completion_tokens > 0
    long_tool = {"type": "function", "function": {**WEATHER["function"]}}
    long_tool["function"]["description"] = "Looks up the weather. " * 100
    with pytest.raises(openai.RateLimitError, match="Request too large"):
        client.chat.completions.create(**ask, tools=[long_tool])


def test_a_tool_call_stream_left_early_bills_the_arguments_generated(gateway_factory, sqlite_url):
    """A call's arguments are generated tokens too: a client that leaves mid-call, before the
    usage chunk, is billed for them (they are no content, so content alone would bill 0)."""
    key = make_key(sqlite_url, "carl")
    gw = gateway_factory(sqlite_url)
    note = {"type": "string", "minLength": 400, "maxLength": 400}
    params = {"type": "object", "properties": {"note": note}, "required": ["note"]}
    tool = {"type": "function", "function": {"name": "save_note", "parameters": params}}
    body = {"model": "SmolLM2-135M-Instruct", "messages": ASK, "tools": [tool]}
    body |= {"tool_choice": "required", "max_tokens": 300, "stream": True}
    pieces = 0
    url = f"{gw.base_url}/v1/chat/completions"
    with httpx.stream("POST", url, json=body, headers=auth(key), timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:])["choices"]:
                    pieces += len(choice["delta"].get("tool_calls") or [])
            if pieces >= 30:
                break
    assert pieces >= 30
    assert wait_until(lambda: usage_row(gw.base_url, key)["num_requests"] == 1, 30)
    assert usage_row(gw.base_url, key)["completion_tokens"] >= 20


def test_a_conversation_with_tools_streams_stores_and_resends_its_calls(
    gateway_factory, sqlite_url
):
    """The web chat's API: a conversation's tools and tool choice go upstream with each reply;
    the call streams as tool-call pieces, is stored with the reply, comes back with the
    conversation, and is written into the next turn's prompt (not dropped as an empty reply)."""
    key = make_key(sqlite_url, "dana")
    gw = gateway_factory(sqlite_url)
    bad = httpx.post(
        f"{gw.base_url}/api/conversations",
        json={"tools": [{"type": "function", "function": {"name": "no spaces"}}]},
        headers=auth(key),
        timeout=10,
    )
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    named = {"type": "function", "function": {"name": "get_weather"}}
    conv = new_conversation(gw.base_url, key, tools=[WEATHER, ADD], tool_choice=named)
    first = say(gw.base_url, key, conv, ASK[0]["content"], max_tokens=160, temperature=0)
    pieces = [d for e in first.events if e.get("type") == "delta" for d in e.get("tool_calls", [])]
    assert len(pieces) >= 2 and first.text == ""
    stored = first.end["message"]
    assert stored["finish_reason"] == "tool_calls" and stored["status"] == "complete"
    calls = stored["tool_calls"]
    for call in calls:
        assert call["id"] and call["type"] == "function"
        arguments = call["function"]["arguments"]
        jsonschema.validate(json.loads(arguments), PARAMETERS[call["function"]["name"]])
    arguments = "".join(c["function"]["arguments"] for c in calls)
    assert "".join(p["function"].get("arguments", "") for p in pieces) == arguments
    got = get_conversation(gw.base_url, key, conv).json()
    assert got["tools"] == [WEATHER, ADD] and got["tool_choice"] == named
    assert got["messages"][1]["tool_calls"] == calls

    # The next turn's prompt holds the call: it grows by more than the short new message.
    patched = httpx.patch(
        f"{gw.base_url}/api/conversations/{conv}",
        json={"tool_choice": "auto"},
        headers=auth(key),
        timeout=10,
    )
    assert patched.status_code == 200 and patched.json()["tool_choice"] == "auto"
    second = say(gw.base_url, key, conv, "Thanks.", max_tokens=8)
    grown = second.end["message"]["usage"]["prompt_tokens"] - stored["usage"]["prompt_tokens"]
    assert grown >= 12 + len(arguments) // 4, (grown, arguments)
