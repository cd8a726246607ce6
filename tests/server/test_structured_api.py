"""Structured output and tool calls through a real `chatfleet serve`, read by the `openai`
SDK's own helpers: parsed models, reassembled tool-call streams, validated arguments."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import jsonschema
import openai
import pytest
from openai.types.chat import ChatCompletion
from pydantic import BaseModel, Field

from chatfleet.bench.json_schemas import SCHEMAS
from chatfleet.modelfile.tokenizer import Tokenizer
from tests.server.test_openai_sdk import MODEL

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 30},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers",
        "parameters": {
            "type": "object",
            "properties": {
                "a": {"type": "integer", "minimum": -1000, "maximum": 1000},
                "b": {"type": "integer", "minimum": -1000, "maximum": 1000},
            },
            "required": ["a", "b"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
PARAMETERS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, ADD)}
ASK = [{"role": "user", "content": "What is the weather in Paris, and what is 2 + 3?"}]


def one_required_call(client: openai.OpenAI, tools: list[dict]) -> ChatCompletion:
    """One greedy reply that must be exactly one call; its arguments checked against the
    function's parameters. Also what the router, gateway and Ray tests send."""
    r = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=tools,
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=80,
    )
    (call,) = r.choices[0].message.tool_calls or []
    assert r.choices[0].finish_reason == "tool_calls" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), PARAMETERS[call.function.name])
    return r


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


class City(BaseModel):
    name: str = Field(max_length=30)
    country: str = Field(max_length=30)
    population: int = Field(ge=0, le=40_000_000)


def test_parse_round_trips_a_pydantic_model(client):
    r = client.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe Paris as JSON."}],
        response_format=City,
        temperature=0.7,
        max_tokens=120,
    )
    parsed = r.choices[0].message.parsed
    assert isinstance(parsed, City) and r.choices[0].finish_reason == "stop"


def test_completions_take_a_response_format_too(client):
    case = SCHEMAS[1]
    r = client.completions.create(
        model=MODEL,
        prompt=f"{case.prompt} As JSON:",
        max_tokens=120,
        temperature=0.7,
        extra_body={"response_format": _schema_format(case)},
    )
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(r.choices[0].text), case.schema)
    r = client.completions.create(
        model=MODEL,
        prompt="A JSON object describing a cat:",
        max_tokens=100,
        temperature=0,
        extra_body={"response_format": {"type": "json_object"}},
    )
    assert r.choices[0].finish_reason == "stop", r.choices[0].text
    assert isinstance(json.loads(r.choices[0].text), dict)


def _schema_format(case) -> dict:
    return {
        "type": "json_schema",
        "json_schema": {"name": case.name, "schema": case.schema, "strict": True},
    }


def _generate(client, case, n: int, seed: int = 0) -> list[str]:
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": case.prompt + " Reply in JSON."}],
        response_format=_schema_format(case),
        temperature=0.8,
        max_tokens=200,
        n=n,
        seed=seed,
    )
    assert all(c.finish_reason == "stop" for c in r.choices), [c.message for c in r.choices]
    return [c.message.content for c in r.choices]


def test_a_hundred_schema_generations_all_validate(client):
    for k, case in enumerate(SCHEMAS):
        for text in _generate(client, case, n=10, seed=k):
            jsonschema.validate(json.loads(text), case.schema)


def test_sixteen_concurrent_requests_with_different_schemas_all_validate(client):
    cases = [SCHEMAS[i % len(SCHEMAS)] for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda k: _generate(client, cases[k], 1, seed=k), range(16)))
    for case, (text,) in zip(cases, results, strict=True):
        jsonschema.validate(json.loads(text), case.schema)


def test_required_tool_choice_always_calls_with_valid_arguments(client):
    r = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=[WEATHER, ADD],
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=1.0,
        n=8,
        max_tokens=120,
    )
    for choice in r.choices:
        assert choice.finish_reason == "tool_calls", choice.message
        calls = choice.message.tool_calls
        assert calls and all(c.id.startswith("call_") for c in calls)
        for call in calls:
            jsonschema.validate(json.loads(call.function.arguments), PARAMETERS[call.function.name])


def test_a_named_function_is_the_one_called(client):
    r = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=[WEATHER, ADD],
        tool_choice={"type": "function", "function": {"name": "add"}},
        temperature=0,
        max_tokens=60,
    )
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == "add"
    jsonschema.validate(json.loads(call.function.arguments), PARAMETERS["add"])


def test_a_streamed_tool_call_reassembles_in_the_sdk_stream_helper(client):
    args = {"model": MODEL, "messages": ASK, "tools": [WEATHER, ADD], "max_tokens": 120}
    args |= {"tool_choice": "required", "parallel_tool_calls": False, "temperature": 0}
    whole = client.chat.completions.create(**args)
    with client.chat.completions.stream(**args) as stream:
        done = [e for e in stream if e.type == "tool_calls.function.arguments.done"]
        final = stream.get_final_completion()
    (expected,) = whole.choices[0].message.tool_calls
    (call,) = final.choices[0].message.tool_calls
    assert final.choices[0].finish_reason == "tool_calls"
    assert (call.function.name, call.function.arguments) == (
        expected.function.name,
        expected.function.arguments,
    )
    assert [e.arguments for e in done] == [call.function.arguments]
    jsonschema.validate(json.loads(call.function.arguments), PARAMETERS[call.function.name])


def test_calls_cut_by_max_tokens_read_the_same_whole_and_streamed(client):
    """Parallel calls that max_tokens cuts mid-call: the whole calls before the cut are kept,
    and the reply and the stream carry the same calls (the cut one last, as OpenAI does)."""
    args = {"model": MODEL, "messages": ASK, "tools": [WEATHER, ADD], "max_tokens": 60}
    args |= {"tool_choice": "required", "parallel_tool_calls": True, "temperature": 0}
    args["extra_body"] = {"min_tokens": 60}  # calls go on until max_tokens cuts one
    whole = client.chat.completions.create(**args)
    streamed: dict[int, list[str]] = {}  # call index -> [name, arguments]
    reason = None
    for chunk in client.chat.completions.create(**args, stream=True):
        for choice in chunk.choices:
            reason = choice.finish_reason or reason
            for delta in choice.delta.tool_calls or []:
                name_args = streamed.setdefault(delta.index, ["", ""])
                name_args[0] += (delta.function and delta.function.name) or ""
                name_args[1] += (delta.function and delta.function.arguments) or ""
    calls = whole.choices[0].message.tool_calls or []
    assert whole.choices[0].finish_reason == reason == "length"
    expected = [tuple(streamed[k]) for k in sorted(streamed)]
    assert [(c.function.name, c.function.arguments) for c in calls] == expected
    assert len(calls) >= 2 and whole.choices[0].message.content is None
    for call in calls[:-1]:
        jsonschema.validate(json.loads(call.function.arguments), PARAMETERS[call.function.name])


def test_a_call_cut_in_its_closing_tag_has_its_whole_arguments(client):
    """max_tokens that ends a call inside its closing tag: the arguments are the whole call's,
    whole and streamed, never with the start of the tag."""
    args = {"model": MODEL, "messages": ASK, "tools": [WEATHER], "temperature": 0}
    args |= {"tool_choice": "required", "parallel_tool_calls": False}
    whole = client.chat.completions.create(**args, max_tokens=120)
    (expected,) = whole.choices[0].message.tool_calls
    num_tokens = whole.usage.completion_tokens  # the call, its closing tag, the end token
    for max_tokens in (num_tokens - 2, num_tokens - 4):
        r = client.chat.completions.create(**args, max_tokens=max_tokens)
        (call,) = r.choices[0].message.tool_calls
        assert r.choices[0].finish_reason == "length"
        streamed = ""
        for chunk in client.chat.completions.create(**args, max_tokens=max_tokens, stream=True):
            for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                streamed += (delta.function and delta.function.arguments) or ""
        assert call.function.arguments == streamed == expected.function.arguments


def test_a_follow_up_turn_with_the_tool_result_is_answered(client):
    first = one_required_call(client, [WEATHER])
    message = first.choices[0].message
    result = {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": "21 C, sunny"}
    after = {"model": MODEL, "tools": [WEATHER], "tool_choice": "none", "temperature": 0}
    after["max_tokens"] = 40
    follow = client.chat.completions.create(
        messages=[*ASK, message.model_dump(exclude_none=True), result], **after
    )
    plain = client.chat.completions.create(messages=ASK, **after)
    assert follow.choices[0].message.tool_calls is None
    # The call and its result are written into the prompt, not dropped.
    call_tokens = len(message.tool_calls[0].function.arguments) // 4 + 10
    assert follow.usage.prompt_tokens > plain.usage.prompt_tokens + call_tokens


def test_logit_bias_through_the_api(client):
    token = 1000
    r = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        logit_bias={str(token): 100},
        temperature=0,
        max_tokens=3,
        logprobs=True,
    )
    piece = list(Tokenizer.from_model_path().id_to_piece_bytes(token))
    assert [item.bytes for item in r.choices[0].logprobs.content] == [piece] * 3


DEAD_END = {
    "type": "json_schema",
    "json_schema": {"name": "a", "schema": {"enum": ["a"]}, "strict": True},
}


def test_a_dead_end_is_an_error_and_others_go_on(server):
    url = f"{server.base_url}/v1/chat/completions"
    body = {"model": MODEL, "messages": ASK, "response_format": DEAD_END}
    body |= {"min_tokens": 8, "max_tokens": 16}
    with ThreadPoolExecutor(2) as pool:
        normal = pool.submit(
            httpx.post,
            url,
            json={"messages": ASK, "max_tokens": 24, "ignore_eos": True},
            timeout=120,
        )
        r = httpx.post(url, json=body, timeout=120)
        assert r.status_code == 500 and r.json()["error"]["code"] == "grammar_dead_end"
        with httpx.stream("POST", url, json={**body, "stream": True}, timeout=120) as s:
            events = [line for line in s.iter_lines() if line.startswith("data: ")]
        ok = normal.result()
    assert '"grammar_dead_end"' in events[-2] and events[-1] == "data: [DONE]"
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 24
    # Counted as failures, not as requests that stopped.
    lines = httpx.get(f"{server.base_url}/metrics", timeout=10).text.splitlines()
    errors = [ln for ln in lines if ln.startswith("vllm:request_success_total{")]
    errors = [ln for ln in errors if 'finished_reason="error"' in ln]
    assert errors and float(errors[0].rsplit(" ", 1)[1]) >= 2
