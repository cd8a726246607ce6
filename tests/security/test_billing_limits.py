"""No free tokens: every engine request a body asks for is counted and capped, and a key over
its rate is refused before the gateway does any work for it."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.gateway.conftest import auth, make_key, new_conversation, post_sse, say, usage_row
from tests.server_process import start_server, wait_until

MODEL = "SmolLM2-135M-Instruct"


def _completions(base_url: str, body: dict, headers: dict | None = None) -> httpx.Response:
    body = {"model": MODEL, "max_tokens": 2, **body}
    return httpx.post(f"{base_url}/v1/completions", json=body, headers=headers or {}, timeout=120)


def test_a_huge_prompt_list_is_refused_whole(gateway_factory, sqlite_url, server):
    key = make_key(sqlite_url, "alice")
    gw = gateway_factory(sqlite_url)
    for base, headers in ((gw.base_url, auth(key)), (server.base_url, {})):
        r = _completions(base, {"prompt": ["a"] * 20_000}, headers)
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompt", base


def test_every_prompt_counts_against_the_keys_request_rate(gateway_factory, sqlite_url):
    key = make_key(sqlite_url, "bob", rpm=5)
    gw = gateway_factory(sqlite_url)
    assert _completions(gw.base_url, {"prompt": ["a", "b", "c", "d"]}, auth(key)).status_code == 200
    r = _completions(gw.base_url, {"prompt": ["e", "f"]}, auth(key))
    assert r.status_code == 429 and r.json()["error"]["type"] == "requests"
    too_many = _completions(gw.base_url, {"prompt": ["x"] * 6}, auth(key))
    assert (
        too_many.status_code == 429 and "Request too large" in too_many.json()["error"]["message"]
    )


def test_a_key_over_its_rate_is_refused_before_its_body_is_read(gateway_factory, sqlite_url):
    """The second request's body is not even JSON: refused for the rate (429), not for the
    body (400), so the gateway never parsed, let alone tokenized, it."""
    key = make_key(sqlite_url, "carol", rpm=1)
    gw = gateway_factory(sqlite_url)
    assert _completions(gw.base_url, {"prompt": "hi"}, auth(key)).status_code == 200
    r = httpx.post(
        f"{gw.base_url}/v1/chat/completions",
        content=b"{" * 1000,
        headers={**auth(key), "content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 429, r.text


def test_the_server_counts_each_prompt_and_choice_as_an_engine_request(tmp_path):
    srv = start_server(tmp_path, "--max-num-seqs", "2", "--max-queue-len", "2")
    try:
        r = _completions(srv.base_url, {"prompt": ["a", "b", "c"], "n": 2})
        assert r.status_code == 400 and "engine requests" in r.json()["error"]["message"]
        long = {"prompt": ["one", "two", "three", "four"], "max_tokens": 200, "ignore_eos": True}
        body = {"model": MODEL, **long, "stream": True}
        url = f"{srv.base_url}/v1/completions"
        # The stream's headers come once its four engine requests hold their slots.
        with httpx.stream("POST", url, json=body, timeout=120) as big:
            assert big.status_code == 200
            second = _completions(srv.base_url, {"prompt": "x"})
            assert second.status_code == 503 and second.json()["error"]["code"] == "overloaded"
            assert "data: [DONE]" in list(big.iter_lines())
    finally:
        srv.stop()


def test_a_non_streamed_request_whose_client_leaves_pays_for_what_was_generated(
    gateway_factory, sqlite_url
):
    key = make_key(sqlite_url, "dave")
    gw = gateway_factory(sqlite_url)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell a long tale."}]}
    body |= {"max_tokens": 1500, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):  # the client gives up after 1 s of a long reply
        httpx.post(
            f"{gw.base_url}/v1/chat/completions",
            json=body,
            headers=auth(key),
            timeout=httpx.Timeout(60, read=1),
        )
    assert wait_until(lambda: usage_row(gw.base_url, key)["num_requests"] == 1, 30)
    billed = usage_row(gw.base_url, key)["completion_tokens"]
    assert 0 < billed < 1500  # what the engine made before it was stopped, not nothing


def test_every_choice_of_a_stream_left_early_is_billed(gateway_factory, sqlite_url):
    """n=3 streamed, the client leaves after a few chunks, before the usage chunk: the bill
    counts all three choices' text, not choice 0's alone."""
    key = make_key(sqlite_url, "erin")
    gw = gateway_factory(sqlite_url)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Count slowly."}]}
    body |= {"max_tokens": 200, "ignore_eos": True, "n": 3, "stream": True, "temperature": 1.0}
    received: dict[int, int] = {}
    url = f"{gw.base_url}/v1/chat/completions"
    with httpx.stream("POST", url, json=body, headers=auth(key), timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:])["choices"]:
                    if choice["delta"].get("content"):
                        received[choice["index"]] = received.get(choice["index"], 0) + 1
            if sum(received.values()) >= 30:
                break
    assert set(received) == {0, 1, 2}
    assert wait_until(lambda: usage_row(gw.base_url, key)["num_requests"] == 1, 30)
    billed = usage_row(gw.base_url, key)["completion_tokens"]
    assert billed >= sum(received.values()) - 3  # every choice's chunks, roughly a token each


def _history_of_tool_calls(num_words: int) -> list[dict]:
    """A chat history whose bulk is an assistant's past tool call (its arguments)."""
    args = json.dumps({"text": "lorem ipsum " * num_words})
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": args}}
    return [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
    ]


def test_an_assistants_past_tool_calls_count_as_prompt(gateway_factory, sqlite_url):
    """The upstream writes past calls into the prompt: they count against the key's token
    limit up front, and a stream left before its usage chunk is billed for them."""
    small = make_key(sqlite_url, "frank", tpm=300)
    key = make_key(sqlite_url, "gina")
    gw = gateway_factory(sqlite_url)
    url = f"{gw.base_url}/v1/chat/completions"
    body = {"model": MODEL, "messages": _history_of_tool_calls(400), "max_tokens": 1}
    r = httpx.post(url, json=body, headers=auth(small), timeout=120)
    assert r.status_code == 429 and "Request too large" in r.json()["error"]["message"], r.text
    body |= {"max_tokens": 200, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", url, json=body, headers=auth(key), timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"]:
                break  # the client leaves at the first chunk
    assert wait_until(lambda: usage_row(gw.base_url, key)["num_requests"] == 1, 30)
    assert usage_row(gw.base_url, key)["prompt_tokens"] > 400


def test_a_conversations_tools_count_as_prompt(gateway_factory, sqlite_url):
    """The tools a conversation lets its replies call are written into every reply's prompt:
    they count against the key's token limit up front, and a reply left before its usage
    chunk is billed for them."""
    small = make_key(sqlite_url, "hana", tpm=300)
    key = make_key(sqlite_url, "ivan")
    gw = gateway_factory(sqlite_url)
    description = "lorem ipsum " * 300
    tools = [
        {"type": "function", "function": {"name": name, "description": description}}
        for name in ("lookup", "search")
    ]
    refused = say(gw.base_url, small, new_conversation(gw.base_url, small, tools=tools), "hi")
    assert refused.status == 429 and "Request too large" in refused.body["error"]["message"]
    conv = new_conversation(gw.base_url, key, tools=tools)
    path = f"/api/conversations/{conv}/messages"
    left = post_sse(
        gw.base_url, key, path, {"content": "hi"}, on_event=lambda e: e["type"] == "delta"
    )
    assert left.status == 200
    assert wait_until(lambda: usage_row(gw.base_url, key)["num_requests"] == 1, 30)
    assert usage_row(gw.base_url, key)["prompt_tokens"] > 400


def test_v1_tools_count_as_prompt_unless_tool_choice_is_none(gateway_factory, sqlite_url):
    """The server writes tools into the prompt except with tool_choice "none": a /v1 request
    is reserved for them in the first case and not in the second."""
    small = make_key(sqlite_url, "jack", tpm=300)
    gw = gateway_factory(sqlite_url)
    description = "lorem ipsum " * 300
    tools = [{"type": "function", "function": {"name": "lookup", "description": description}}]
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    url = f"{gw.base_url}/v1/chat/completions"
    r = httpx.post(url, json=body | {"tools": tools}, headers=auth(small), timeout=120)
    assert r.status_code == 429 and "Request too large" in r.json()["error"]["message"], r.text
    none = body | {"tools": tools, "tool_choice": "none"}
    r = httpx.post(url, json=none, headers=auth(small), timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] < 100
