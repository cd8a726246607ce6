"""Conversation replies under races and departures: one reply at a time, nothing lost while a
reply waits in a queue, and a client that leaves before its first byte stops its reply."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.gateway.conftest import (
    auth,
    get_conversation,
    launch_gateway,
    make_key,
    new_conversation,
)
from tests.server_process import ServerProcess, start_server, wait_until

LONG = {
    "model": "SmolLM2-135M-Instruct",
    "messages": [{"role": "user", "content": "Write a long story about the sea."}],
    "max_tokens": 700,
    "ignore_eos": True,
}


@pytest.fixture(scope="module")
def one_slot_server(tmp_path_factory) -> Iterator[ServerProcess]:
    """An upstream that runs one request at a time: a second one waits in its queue."""
    srv = start_server(tmp_path_factory.mktemp("one-slot"), "--max-num-seqs", "1")
    yield srv
    srv.stop()


def _occupy(server: ServerProcess) -> concurrent.futures.Future:
    """Keep the upstream's one slot busy for a few seconds."""
    pool = concurrent.futures.ThreadPoolExecutor(1)
    future = pool.submit(
        httpx.post, f"{server.base_url}/v1/chat/completions", json=LONG, timeout=120
    )
    pool.shutdown(wait=False)
    return future


def _running(server: ServerProcess) -> bool:
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    return any(
        line.startswith("vllm:num_requests_running") and not line.endswith(" 0.0")
        for line in text.splitlines()
    )


def _behind_a_busy_upstream(
    gw: ServerProcess, key: str, server: ServerProcess
) -> tuple[str, concurrent.futures.Future, str]:
    """A new conversation, its messages URL, and the upstream's one slot taken meanwhile."""
    conv = new_conversation(gw.base_url, key)
    busy = _occupy(server)
    assert wait_until(lambda: _running(server), 30)
    return conv, busy, f"{gw.base_url}/api/conversations/{conv}/messages"


def test_two_replies_started_together_one_is_a_conflict(gateway_factory, sqlite_url):
    key = make_key(sqlite_url, "alice", max_streams=4)
    gw = gateway_factory(sqlite_url)
    conv = new_conversation(gw.base_url, key)
    url = f"{gw.base_url}/api/conversations/{conv}/messages"
    start = threading.Barrier(2)

    def post(text: str) -> int:
        start.wait()
        body = {"content": text, "max_tokens": 32}
        with httpx.stream("POST", url, json=body, headers=auth(key), timeout=120) as r:
            r.read()
            return r.status_code

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        codes = sorted(pool.map(post, ["first", "second"]))
    assert codes == [200, 409]
    messages = get_conversation(gw.base_url, key, conv).json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]


def test_a_queued_message_is_stored_and_survives_a_killed_gateway(
    tmp_path, one_slot_server, sqlite_url
):
    key = make_key(sqlite_url, "bob")
    gw = launch_gateway(tmp_path, one_slot_server.base_url, sqlite_url)
    try:
        conv, busy, url = _behind_a_busy_upstream(gw, key, one_slot_server)
        pool = concurrent.futures.ThreadPoolExecutor(1)
        body = {"content": "Are you there?"}
        pool.submit(httpx.post, url, json=body, headers=auth(key), timeout=60)

        def stored() -> bool:
            messages = get_conversation(gw.base_url, key, conv).json()["messages"]
            return [m["content"] for m in messages if m["role"] == "user"] == ["Are you there?"]

        assert wait_until(stored, 10)  # while its reply still waits for the upstream
    finally:
        gw.stop(sig=9)
    pool.shutdown(wait=False)
    again = launch_gateway(tmp_path, one_slot_server.base_url, sqlite_url)
    try:
        messages = get_conversation(again.base_url, key, conv).json()["messages"]
        assert messages[0]["content"] == "Are you there?"
        assert wait_until(
            lambda: (
                get_conversation(again.base_url, key, conv).json()["messages"][1]["status"]
                == "incomplete"
            ),
            30,
        )
    finally:
        again.stop()
        busy.result()


def test_a_client_gone_before_its_first_byte_stops_its_reply(tmp_path, one_slot_server, sqlite_url):
    key = make_key(sqlite_url, "carol", max_streams=1)
    gw = launch_gateway(tmp_path, one_slot_server.base_url, sqlite_url)
    try:
        conv, busy, url = _behind_a_busy_upstream(gw, key, one_slot_server)
        with pytest.raises(httpx.ReadTimeout):  # queued upstream: no byte yet, and it leaves
            httpx.post(
                url,
                json={"content": "Hello?"},
                headers=auth(key),
                timeout=httpx.Timeout(60, read=1),
            )
        assert busy.result().status_code == 200

        def reply_status() -> str:
            return get_conversation(gw.base_url, key, conv).json()["messages"][-1]["status"]

        assert wait_until(lambda: reply_status() == "stopped", 30), reply_status()
        # The stream slot came back at once: a new reply streams (max_streams is 1).
        started = time.monotonic()
        again = httpx.post(
            url, json={"content": "Still there?", "max_tokens": 4}, headers=auth(key), timeout=60
        )
        assert again.status_code == 200 and time.monotonic() - started < 30
    finally:
        gw.stop()
