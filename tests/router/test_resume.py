"""Mid-stream failover: a stream whose replica is SIGKILLed part-way continues on another
replica; the client gets the text an undisturbed run gives, byte for byte, with one id, one
`created`, and the whole reply's usage; a non-streamed request is answered whole; a chat
reply stored by the gateway is complete."""

from __future__ import annotations

import json
import os
import signal
import threading

import httpx
import pytest

from chatfleet.engine.async_engine import FAULT_STEP_ENV
from tests.gateway.conftest import (
    get_conversation,
    launch_gateway,
    make_key,
    new_conversation,
    post_sse,
)
from tests.router.conftest import (
    FAST_HEALTH,
    MODEL,
    REPLICA_HEADER,
    launch_router,
    launch_servers,
    replica_states,
    router_metric,
    start_router,
    wait_until,
)
from tests.server_process import launch_server, wait_ready

pytestmark = pytest.mark.e2e  # starts its own servers (and kills some)

PROMPT = "Tell me about lighthouses."


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """A router over six replicas; each test kills one (five in all) but the one that
    freezes one for a while."""
    tmp_path = tmp_path_factory.mktemp("resume")
    replicas = launch_servers(tmp_path, 6)
    router = start_router(tmp_path, replicas, *FAST_HEALTH)
    yield router, {r.base_url: r for r in replicas}, tmp_path
    router.stop()
    for r in replicas:
        if r.proc.poll() is None:
            r.stop()


def _kill_when(replicas: dict, kill_after: int | None):
    """on_chunk(url, num_content_chunks): SIGKILLs the replica at `url` once that many
    chunks of text came from it."""

    def on_chunk(url: str, num_chunks: int) -> None:
        if kill_after is not None and num_chunks == kill_after:
            replicas[url].proc.send_signal(signal.SIGKILL)
            replicas[url].proc.wait(10)

    return on_chunk


def stream(router, body: dict, on_chunk=None) -> dict:
    """The stream's text, ids, created, usage, and whether an error event came."""
    out: dict = {"text": "", "ids": set(), "created": set(), "usage": None, "error": False}
    with httpx.stream(
        "POST", f"{router.base_url}/v1/chat/completions", json=body, timeout=120
    ) as r:
        assert r.status_code == 200
        out["replica"] = r.headers.get(REPLICA_HEADER)
        num_chunks = 0
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                out["error"] = True
                continue
            out["ids"].add(chunk["id"])
            out["created"].add(chunk["created"])
            assert not any(k.startswith("chatfleet_") for k in chunk)  # stripped by the router
            out["usage"] = chunk.get("usage") or out["usage"]
            for choice in chunk["choices"]:
                text = choice["delta"].get("content")
                if text:
                    out["text"] += text
                    num_chunks += 1
                    if on_chunk is not None:
                        on_chunk(out["replica"], num_chunks)
    return out


def chat_body(**sampling) -> dict:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 64,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        **sampling,
    }


@pytest.mark.parametrize(
    "sampling", [{"temperature": 0}, {"temperature": 0.8, "seed": 4321}], ids=["greedy", "seeded"]
)
def test_a_stream_survives_its_replica_being_killed(fleet, sampling):
    router, replicas, _ = fleet
    body = chat_body(**sampling)
    undisturbed = stream(router, body)
    resumed_before = router_metric(router, "chatfleet_router_stream_resumptions_total")
    disturbed = stream(router, body, _kill_when(replicas, kill_after=20))
    assert replicas[disturbed["replica"]].proc.poll() is not None  # it was killed mid-way
    assert not disturbed["error"]
    assert disturbed["text"] == undisturbed["text"]
    assert len(disturbed["ids"]) == len(disturbed["created"]) == 1  # one stream to the client
    assert disturbed["usage"]["completion_tokens"] == undisturbed["usage"]["completion_tokens"]
    assert disturbed["usage"]["prompt_tokens"] == undisturbed["usage"]["prompt_tokens"]
    # attempted and succeeded, once each
    assert router_metric(router, "chatfleet_router_stream_resumptions_total") == resumed_before + 2
    assert router_metric(router, "chatfleet_router_resume_seconds_count") >= 1


def test_a_client_cannot_send_the_routers_fields(fleet):
    """A continuation made up by a client (tokens it never paid for, text it claims to have)
    and a request for token ids are dropped at the router: the reply is the plain one."""
    router, _, _ = fleet
    body = chat_body(temperature=0)
    plain = stream(router, body)
    forged = {"token_ids": [504] * 60, "sent_chars": 5}
    got = stream(router, {**body, "chatfleet_continue": forged, "chatfleet_token_ids": True})
    assert got["text"] == plain["text"]
    for count in ("prompt_tokens", "completion_tokens"):
        assert got["usage"][count] == plain["usage"][count]


def test_a_non_streamed_request_whose_replica_dies_is_answered_whole(fleet):
    router, replicas, _ = fleet
    body = {**chat_body(temperature=0), "stream": False, "max_tokens": 160}
    del body["stream_options"]
    result: dict = {}

    def ask() -> None:
        r = httpx.post(f"{router.base_url}/v1/chat/completions", json=body, timeout=120)
        result.update(status=r.status_code, body=r.json(), replica=r.headers.get(REPLICA_HEADER))

    thread = threading.Thread(target=ask)
    thread.start()

    def busy() -> str | None:
        states = replica_states(router)
        return next((u for u, s in states.items() if s["num_in_flight"] and s["eligible"]), None)

    assert wait_until(lambda: busy() is not None, 30)
    victim = busy()
    assert victim is not None
    replicas[victim].proc.send_signal(signal.SIGKILL)
    thread.join(120)
    assert result["status"] == 200, result
    assert result["replica"] != victim
    assert result["body"]["usage"]["completion_tokens"] == 160


def test_a_gateway_reply_whose_replica_dies_is_stored_complete(fleet):
    router, replicas, tmp_path = fleet
    sqlite_url = f"sqlite:///{tmp_path}/gateway.db"
    alive = [url for url, r in replicas.items() if r.proc.poll() is None]
    assert len(alive) >= 2, "a replica to kill and one to resume on"
    gateway = launch_gateway(tmp_path, router.base_url, sqlite_url)
    try:
        key = make_key(sqlite_url, "ada")
        conversation = new_conversation(gateway.base_url, key)
        path = f"/api/conversations/{conversation}/messages"
        body = {"content": PROMPT, "max_tokens": 48}
        deltas: list[str] = []
        killed: list[str] = []

        def on_event(event: dict) -> bool:
            if event.get("type") == "delta":
                deltas.append(event["content"])
                if len(deltas) == 8:  # the router's replica: the one with a request in flight
                    states = replica_states(router)
                    busy = [u for u, s in states.items() if s["num_in_flight"]]
                    for url in busy:
                        os.kill(replicas[url].proc.pid, signal.SIGKILL)
                        killed.append(url)
            return False

        reply = post_sse(gateway.base_url, key, path, body, on_event)
        assert len(killed) == 1
        assert reply.exception is None and reply.end is not None
        assert reply.end["message"]["status"] == "complete"
        stored = get_conversation(gateway.base_url, key, conversation).json()["messages"][-1]
        assert stored["status"] == "complete" and stored["content"] == reply.text
        assert len(reply.text) > len("".join(deltas[:8]))  # it went on past the kill
    finally:
        gateway.stop()


def test_a_stream_whose_replica_hangs_continues_elsewhere(fleet):
    """A replica that stops sending tokens (SIGSTOP: alive, silent) misses the token deadline,
    is ejected, and the stream goes on elsewhere."""
    _, replicas, tmp_path = fleet
    alive = [r for r in replicas.values() if r.proc.poll() is None]
    router = start_router(tmp_path, alive, *FAST_HEALTH, "--token-timeout", "2")
    stopped = []

    def hang(url: str, num_chunks: int) -> None:
        if num_chunks == 10:
            replicas[url].proc.send_signal(signal.SIGSTOP)
            stopped.append(replicas[url])

    try:
        body = chat_body(temperature=0)
        undisturbed = stream(router, body)
        hung = stream(router, body, hang)
        assert len(stopped) == 1 and not hung["error"]
        assert hung["text"] == undisturbed["text"]
        assert router_metric(router, "chatfleet_router_stream_resumptions_total") == 2
    finally:
        router.stop()
        for r in stopped:
            r.proc.send_signal(signal.SIGCONT)  # thawed: it serves the next test


def test_past_its_resumptions_a_cut_stream_ends_with_an_error_event(fleet):
    """--max-resumptions bounds them; 0 is every other proxy's behaviour."""
    _, replicas, tmp_path = fleet
    alive = [r for r in replicas.values() if r.proc.poll() is None]
    router = start_router(tmp_path, alive, *FAST_HEALTH, "--max-resumptions", "0")
    try:
        cut = stream(router, chat_body(temperature=0), _kill_when(replicas, kill_after=10))
        assert replicas[cut["replica"]].proc.poll() is not None
        assert cut["error"] and cut["usage"] is None
        assert router_metric(router, "chatfleet_router_stream_resumptions_total") == 0
    finally:
        router.stop()


def test_a_stream_whose_replica_engine_dies_continues_elsewhere(tmp_path, server):
    """A replica whose engine dies mid-stream (its process still up) reports it in an
    `engine_dead` error event: the replica failed, not the request, so the stream resumes on
    another replica and the client gets the whole reply, no error."""
    env = {FAULT_STEP_ENV: "24"}  # its engine dies 24 steps into its first stream
    faulty = wait_ready(launch_server(tmp_path, "--num-threads", "1", env=env))
    urls = [faulty.base_url, server.base_url]
    router = launch_router(tmp_path, urls, *FAST_HEALTH, "--policy", "round_robin")
    try:
        assert wait_until(lambda: all(s["eligible"] for s in replica_states(router).values()))
        body = chat_body(temperature=0)
        undisturbed = stream(server, body)
        for _ in urls:  # round robin: one of these lands on the faulty replica
            resumed = stream(router, body)
            if resumed["replica"] == faulty.base_url:
                break
        assert resumed["replica"] == faulty.base_url and faulty.proc.wait(30) == 1
        assert not resumed["error"]
        assert resumed["text"] == undisturbed["text"]
        assert resumed["usage"]["completion_tokens"] == undisturbed["usage"]["completion_tokens"]
        assert router_metric(router, "chatfleet_router_stream_resumptions_total") == 2
    finally:
        router.stop()
        faulty.stop()
