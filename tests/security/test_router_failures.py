"""The router against replicas that hang or fail: a hung replica (a real `chatfleet serve`
stopped with SIGSTOP) is ejected by the token deadline and holds no stream past it; a 500
that the request itself causes is passed on, not retried on every replica and not counted
against healthy ones; a stream cut after its last token ends cleanly."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from tests.router.conftest import launch_router, replica_states, router_metric, stream_chat
from tests.server_process import ServerProcess, free_port, start_server, wait_until

TOKEN_TIMEOUT = ("--token-timeout", "2")
# Probes alone never eject here: an ejection comes from the token deadline.
PATIENT_PROBES = ("--max-failures", "1000", "--probe-interval", "0.2", "--eject-cooldown", "1")


@contextmanager
def _stopped(replica: ServerProcess) -> Iterator[None]:
    """The replica's process frozen (it accepts connections and never answers), then thawed."""
    replica.proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        replica.proc.send_signal(signal.SIGCONT)


def test_a_replica_hung_mid_stream_is_ejected_and_the_stream_ends(tmp_path):
    replica = start_server(tmp_path, "--num-threads", "1")
    router = launch_router(tmp_path, [replica.base_url], *TOKEN_TIMEOUT, *PATIENT_PROBES)
    try:
        assert wait_until(lambda: replica_states(router)[replica.base_url]["eligible"])
        started: list = []
        result: dict = {}

        def run() -> None:
            result.update(stream_chat(router.base_url, 4000, started))

        client = threading.Thread(target=run)
        client.start()
        assert wait_until(lambda: bool(started), timeout_s=60)
        with _stopped(replica):
            t0 = time.monotonic()
            client.join(30)
            ended_s = time.monotonic() - t0
            assert not client.is_alive() and ended_s < 15
            assert result["error"] and result["done"]
            assert replica_states(router)[replica.base_url]["ejected"]
        # Thawed, it sees the router gone and stops generating; one good probe readmits it.
        assert wait_until(lambda: replica_states(router)[replica.base_url]["eligible"], 30)
        again = stream_chat(router.base_url, 8)
        assert again["done"] and not again["error"] and again["completion_tokens"] == 8
    finally:
        router.stop()
        replica.stop()


def test_a_stream_sent_to_a_frozen_replica_goes_to_another(tmp_path, server):
    frozen = start_server(tmp_path, "--num-threads", "1")
    urls = [frozen.base_url, server.base_url]
    router = launch_router(
        tmp_path, urls, *TOKEN_TIMEOUT, *PATIENT_PROBES, "--policy", "round_robin"
    )
    try:
        assert wait_until(lambda: all(s["eligible"] for s in replica_states(router).values()))
        with _stopped(frozen):
            results = [stream_chat(router.base_url, 8) for _ in range(2)]  # one lands on it
            states = replica_states(router)
        for r in results:
            assert r["status"] == 200 and r["done"] and not r["error"], r
            assert r["replica"] == server.base_url and r["completion_tokens"] == 8
        assert states[frozen.base_url]["ejected"] and not states[server.base_url]["ejected"]
    finally:
        router.stop()
        frozen.stop()


class _ScriptedReplica:
    """A replica that answers probes and whose chat completions `chat` scripts, served on
    127.0.0.1 in a thread."""

    def __init__(self, chat: Callable[[], Response]) -> None:
        self.hits = 0
        app = FastAPI()
        app.get("/health")(lambda: PlainTextResponse("ok"))
        app.get("/ready")(lambda: PlainTextResponse("ok"))
        app.get("/metrics")(lambda: PlainTextResponse(""))

        @app.post("/v1/chat/completions")
        def completions() -> Response:
            self.hits += 1
            return chat()

        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="critical"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        assert wait_until(lambda: self.server.started, 10)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def _failing_replica(code: str | None) -> _ScriptedReplica:
    """Chat completions fail with a 500 of code `code` (None: an internal error, which a
    request that trips a bug gets)."""
    error = {"message": "internal error", "type": "server_error", "param": None}
    return _ScriptedReplica(lambda: JSONResponse({"error": {**error, "code": code}}, 500))


def test_a_500_the_request_causes_is_passed_on_and_ejects_nothing(tmp_path):
    buggy = [_failing_replica(None) for _ in range(3)]
    dead = [_failing_replica("engine_dead") for _ in range(2)]
    urls = [r.url for r in buggy]
    router = launch_router(tmp_path, urls, "--max-failures", "2", "--probe-interval", "0.2")
    dead_router = launch_router(tmp_path, [r.url for r in dead], "--probe-interval", "0.2")
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    try:
        assert wait_until(lambda: all(s["eligible"] for s in replica_states(router).values()))
        for _ in range(3):
            r = httpx.post(f"{router.base_url}/v1/chat/completions", json=body, timeout=30)
            assert r.status_code == 500 and r.json()["error"]["message"] == "internal error"
        assert sum(r.hits for r in buggy) == 3  # each tried once, on one replica
        states = replica_states(router).values()
        assert not any(s["ejected"] for s in states) and all(s["eligible"] for s in states)
        # A dead engine is the replica's failure: the request goes to the other one.
        assert wait_until(lambda: all(s["eligible"] for s in replica_states(dead_router).values()))
        r = httpx.post(f"{dead_router.base_url}/v1/chat/completions", json=body, timeout=30)
        assert r.status_code == 500 and json.loads(r.content)["error"]["code"] == "engine_dead"
        assert [d.hits for d in dead] == [1, 1]
    finally:
        router.stop()
        dead_router.stop()
        for r in buggy + dead:
            r.stop()


def _cut_after_finish() -> StreamingResponse:
    """A stream that sends its reply to the end (finish_reason) and then breaks off before
    [DONE]: nothing is left to resume."""

    def events() -> Iterator[str]:
        base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1}
        delta = {"index": 0, "delta": {"content": "Hello"}, "finish_reason": None}
        yield f"data: {json.dumps(base | {'choices': [delta], 'chatfleet_token_ids': [7]})}\n\n"
        end = {"index": 0, "delta": {}, "finish_reason": "stop"}
        yield f"data: {json.dumps(base | {'choices': [end]})}\n\n"
        raise RuntimeError("the replica dies")

    return StreamingResponse(events(), media_type="text/event-stream")


def test_a_stream_cut_after_its_last_token_ends_without_an_error(tmp_path):
    replica = _ScriptedReplica(_cut_after_finish)
    router = launch_router(tmp_path, [replica.url], "--probe-interval", "0.2")
    try:
        assert wait_until(lambda: all(s["eligible"] for s in replica_states(router).values()))
        result = stream_chat(router.base_url, 8)
        assert result["done"] and not result["error"], result
        chunks = [json.loads(e) for e in result["events"][:-1]]
        text = "".join(c["delta"].get("content", "") for t in chunks for c in t["choices"])
        assert text == "Hello"
    finally:
        router.stop()
        replica.stop()


def test_requests_on_a_frozen_replica_go_elsewhere_once_it_is_ejected(tmp_path, server):
    """A non-streamed request, and a stream before its first token, waiting on a replica that
    freezes are sent to another replica once probes eject it: well before the read timeout
    (non-streamed) and the token deadline (streams), which are left at their defaults."""
    frozen = start_server(tmp_path, "--num-threads", "1")
    fast = ("--max-failures", "2", "--probe-interval", "0.2", "--probe-timeout", "1")
    urls = [frozen.base_url, server.base_url]
    router = launch_router(tmp_path, urls, *fast, "--policy", "round_robin")
    body = {"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "Hi"}]}
    body.update(max_tokens=8, ignore_eos=True)
    results: dict[int, dict] = {}

    def ask(i: int) -> None:
        url = f"{router.base_url}/v1/chat/completions"
        if i >= 2:  # a stream
            results[i] = stream_chat(router.base_url, 8)
        else:
            r = httpx.post(url, json=body, timeout=60)
            usage = r.json()["usage"]["completion_tokens"] if r.status_code == 200 else None
            results[i] = {"status": r.status_code, "replica": r.headers.get("x-chatfleet-replica")}
            results[i].update(done=True, error=False, completion_tokens=usage)

    try:
        assert wait_until(lambda: all(s["eligible"] for s in replica_states(router).values()))
        clients = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
        with _stopped(frozen):
            t0 = time.monotonic()
            for client in clients:  # round robin, in order: one of each kind per replica
                client.start()
                time.sleep(0.2)
            for client in clients:
                client.join(60)
            answered_s = time.monotonic() - t0
            assert replica_states(router)[frozen.base_url]["ejected"]
        assert answered_s < 30, results
        assert router_metric(router, "chatfleet_router_retries_total") >= 2  # those it held
        for r in results.values():
            assert r["status"] == 200 and r["done"] and not r["error"], r
            assert r["replica"] == server.base_url and r["completion_tokens"] == 8
    finally:
        router.stop()
        frozen.stop()
