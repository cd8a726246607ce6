"""Conversations end to end: a real gateway over a real `chatfleet serve`."""

from __future__ import annotations

import threading

import httpx
import openai

from tests.gateway.conftest import (
    auth,
    get_conversation,
    make_key,
    new_conversation,
    post_sse,
    say,
)


def test_conversation_lifecycle_usage_and_regenerate(gateway_factory, sqlite_url):
    key = make_key(sqlite_url, "alice")
    gw = gateway_factory(sqlite_url)
    base = gw.base_url
    conv = new_conversation(base, key)
    first = say(base, key, conv, "What is the capital of France?", max_tokens=12)
    assert first.status == 200
    kinds = [e["type"] for e in first.events]
    assert kinds[0] == "start" and kinds[-1] == "end" and "delta" in kinds
    reply = first.end["message"]
    assert reply["status"] == "complete" and reply["content"] == first.text
    assert reply["finish_reason"] in ("stop", "length")
    usage = reply["usage"]
    assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= 12

    second = say(base, key, conv, "And of Germany?", max_tokens=12)
    assert second.end["message"]["status"] == "complete"
    # The second turn's prompt starts with the first: the engine's prefix cache served it.
    assert second.end["message"]["usage"]["prompt_tokens_details"]["cached_tokens"] > 0

    body = get_conversation(base, key, conv).json()
    assert body["title"] == "What is the capital of France?"
    assert [m["role"] for m in body["messages"]] == ["user", "assistant"] * 2
    assert [m["status"] for m in body["messages"]] == ["complete"] * 4
    assert body["messages"][1]["content"] == first.text

    # Usage per key and day: exactly the engine's counts of both replies.
    total = httpx.get(f"{base}/api/usage", headers=auth(key), timeout=10).json()["total"]
    replies = [first.end["message"]["usage"], second.end["message"]["usage"]]
    assert total["num_requests"] == 2
    for field in ("prompt_tokens", "completion_tokens"):
        assert total[field] == sum(u[field] for u in replies)
    cached = sum(u["prompt_tokens_details"]["cached_tokens"] for u in replies)
    assert total["cached_tokens"] == cached

    # Regenerate replaces the last reply (same history, a new sample).
    old_last = body["messages"][-1]["id"]
    again = post_sse(
        base, key, f"/api/conversations/{conv}/regenerate", {"max_tokens": 8, "temperature": 1}
    )
    assert again.status == 200 and again.events[0]["user_message"] is None
    messages = get_conversation(base, key, conv).json()["messages"]
    assert len(messages) == 4 and messages[-1]["id"] != old_last
    assert messages[-1]["content"] == again.text and messages[-1]["status"] == "complete"

    # Rename, list, delete.
    url = f"{base}/api/conversations/{conv}"
    renamed = httpx.patch(url, json={"title": "Capitals"}, headers=auth(key), timeout=10)
    assert renamed.json()["title"] == "Capitals"
    listed = httpx.get(f"{base}/api/conversations", headers=auth(key), timeout=10).json()
    assert [c["id"] for c in listed["data"]] == [conv]
    assert httpx.delete(url, headers=auth(key), timeout=10).json()["deleted"] is True
    assert get_conversation(base, key, conv).status_code == 404


def test_bad_input_gets_openai_errors_and_stores_nothing(gateway_factory, sqlite_url):
    key = make_key(sqlite_url, "alice")
    gw = gateway_factory(sqlite_url)
    base = gw.base_url
    conv = new_conversation(base, key)
    path = f"/api/conversations/{conv}/messages"

    def post(content: bytes | None = None, **kw) -> httpx.Response:
        headers = {**auth(key), "content-type": "application/json"}
        return httpx.post(base + path, content=content, headers=headers, timeout=30, **kw)

    cases = [
        (post(b"{not json"), 400, None),
        (post(b'{"content": ""}'), 400, "content"),
        (post(b'{"content": 5}'), 400, "content"),
        (post(b'{"content": "hi", "max_tokens": "many"}'), 400, "max_tokens"),
        (post(b'{"content": "hi", "temperature": 9}'), 400, "temperature"),
        (post(b"[1, 2]"), 400, None),
        (post(b'{"content": "' + b"x" * (5 << 20) + b'"}'), 413, None),
        (post(b'{"content": "\\ud800"}'), 400, None),
    ]
    for r, status, param in cases:
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
        assert param is None or error["param"] == param
    r = httpx.get(f"{base}/api/conversations/conv_missing", headers=auth(key), timeout=10)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.get(f"{base}/api/nowhere", headers=auth(key), timeout=10)
    assert r.status_code == 404
    r = httpx.get(f"{base}/api/conversations?limit=0", headers=auth(key), timeout=10)
    assert r.status_code == 400 and r.json()["error"]["param"] == "limit"
    # A message longer than the model's whole context.
    r = say(base, key, conv, "word " * 9000)
    assert r.status == 400 and r.body["error"]["code"] == "context_length_exceeded"
    assert get_conversation(base, key, conv).json()["messages"] == []
    assert httpx.get(f"{base}/health", timeout=10).status_code == 200


def test_upstream_down_is_a_502_and_nothing_is_stored(gateway_factory, sqlite_url):
    key = make_key(sqlite_url, "alice")
    gw = gateway_factory(sqlite_url, "--max-model-len", "2048", upstream="http://127.0.0.1:9")
    conv = new_conversation(gw.base_url, key)
    r = say(gw.base_url, key, conv, "hello?")
    assert r.status == 502 and r.body["error"]["type"] == "server_error"
    assert get_conversation(gw.base_url, key, conv).json()["messages"] == []


def test_second_reply_while_one_streams_is_a_conflict(gateway_factory, sqlite_url):
    key = make_key(sqlite_url, "alice")
    gw = gateway_factory(sqlite_url)
    conv = new_conversation(gw.base_url, key)
    clash = []

    def on_event(event: dict) -> bool:
        if event["type"] == "delta" and not clash:
            clash.append(say(gw.base_url, key, conv, "me too"))
        return False

    body = {"content": "Tell me a long story.", "max_tokens": 48}
    path = f"/api/conversations/{conv}/messages"
    first = post_sse(gw.base_url, key, path, body, on_event=on_event)
    assert first.end["message"]["status"] == "complete"
    assert clash[0].status == 409 and clash[0].body["error"]["code"] == "conflict"
    assert len(get_conversation(gw.base_url, key, conv).json()["messages"]) == 2


def test_openai_sdk_through_the_gateway(gateway_factory, sqlite_url):
    key = make_key(sqlite_url, "alice")
    gw = gateway_factory(sqlite_url)
    client = openai.OpenAI(base_url=f"{gw.base_url}/v1", api_key=key, max_retries=0)
    models = client.models.list()
    model = models.data[0].id
    done = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=5
    )
    assert done.usage.completion_tokens <= 5 and done.choices[0].message.content
    chunks = list(
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=5, stream=True
        )
    )
    assert chunks and all(c.usage is None for c in chunks)  # usage was not asked for
    with_usage = list(
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert with_usage[-1].usage.completion_tokens <= 5
    text = client.completions.create(model=model, prompt="Once upon a time", max_tokens=4)
    assert text.usage.completion_tokens <= 4
    total = httpx.get(f"{gw.base_url}/api/usage", headers=auth(key), timeout=10).json()["total"]
    assert total["num_requests"] == 4
    expected = sum(r.usage.completion_tokens for r in (done, text))
    assert total["completion_tokens"] >= expected + with_usage[-1].usage.completion_tokens
    bad = httpx.post(
        f"{gw.base_url}/v1/chat/completions", json={"messages": []}, headers=auth(key), timeout=30
    )
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"


def test_stopping_a_reply_stores_it_as_stopped(gateway_factory, sqlite_url):
    key = make_key(sqlite_url, "alice")
    gw = gateway_factory(sqlite_url)
    conv = new_conversation(gw.base_url, key)
    got = threading.Event()

    def on_event(event: dict) -> bool:
        if event["type"] == "delta":
            got.set()
            return True  # leave: the connection closes, like the page's stop button
        return False

    body = {"content": "Write a long essay about the sea.", "max_tokens": 200}
    post_sse(gw.base_url, key, f"/api/conversations/{conv}/messages", body, on_event=on_event)
    assert got.is_set()
    for _ in range(50):
        messages = get_conversation(gw.base_url, key, conv).json()["messages"]
        if messages[-1]["status"] != "streaming":
            break
        threading.Event().wait(0.1)
    assert messages[-1]["status"] == "stopped" and messages[-1]["content"]
    assert messages[-1]["usage"]["completion_tokens"] > 0
    # The conversation goes on.
    assert say(gw.base_url, key, conv, "Thanks.").end["message"]["status"] == "complete"
