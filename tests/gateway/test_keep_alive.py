"""A stream silent longer than --keep-alive gets SSE comments, which every relay passes on:
the server's, through the gateway's OpenAI proxy and its conversation replies."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.gateway.conftest import auth, make_key, new_conversation, post_sse
from tests.server_process import ServerProcess, start_server

MODEL = "SmolLM2-135M-Instruct"
CHAT = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Name three rivers."}],
    "max_tokens": 24,
}


@pytest.fixture(scope="module")
def eager_server(tmp_path_factory) -> Iterator[ServerProcess]:
    """A server that sends a keep-alive after 1 ms of silence: between any two tokens."""
    srv = start_server(tmp_path_factory.mktemp("keepalive"), "--keep-alive", "0.001")
    yield srv
    srv.stop()


def _raw_lines(url: str, body: dict, headers: dict[str, str]) -> list[str]:
    with httpx.stream("POST", url, json=body, headers=headers, timeout=120) as r:
        assert r.status_code == 200
        return list(r.iter_lines())


def test_keep_alive_comments_reach_the_client_and_do_not_change_the_reply(
    eager_server, gateway_factory, sqlite_url
):
    key = make_key(sqlite_url, "alice")
    gw = gateway_factory(sqlite_url, upstream=eager_server.base_url)
    body = {**CHAT, "temperature": 0, "stream": True}
    direct = _raw_lines(f"{eager_server.base_url}/v1/chat/completions", body, {})
    proxied = _raw_lines(f"{gw.base_url}/v1/chat/completions", body, auth(key))
    for lines in (direct, proxied):
        assert ": keep-alive" in lines
        assert [line for line in lines if line][-1] == "data: [DONE]"
    # The SDK skips the comments: the streamed text is the non-streamed one.
    client = openai.OpenAI(base_url=f"{gw.base_url}/v1", api_key=key, max_retries=0)
    whole = client.chat.completions.create(temperature=0, **CHAT)  # type: ignore[call-overload]
    stream = client.chat.completions.create(temperature=0, stream=True, **CHAT)  # type: ignore[call-overload]
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == whole.choices[0].message.content and text


def test_conversation_replies_relay_keep_alives(eager_server, gateway_factory, sqlite_url):
    key = make_key(sqlite_url, "bob")
    gw = gateway_factory(sqlite_url, upstream=eager_server.base_url)
    conv = new_conversation(gw.base_url, key)
    path = f"{gw.base_url}/api/conversations/{conv}/messages"
    lines = _raw_lines(path, {"content": "Name three rivers.", "max_tokens": 24}, auth(key))
    assert ": keep-alive" in lines
    reply = post_sse(gw.base_url, key, f"/api/conversations/{conv}/regenerate", {"max_tokens": 8})
    assert reply.status == 200 and reply.end is not None and reply.end["message"]["content"]
