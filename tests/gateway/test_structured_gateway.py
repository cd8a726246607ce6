"""Tools and structured output through the gateway: the fields reach the engine, a client
that wants one body gets the tool calls the stream carried, and the calls are billed."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

from tests.gateway.conftest import auth, make_key, usage_row
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
