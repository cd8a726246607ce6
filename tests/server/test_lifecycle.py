"""Disconnects, overload, graceful shutdown and engine death on real server processes."""

from __future__ import annotations

import concurrent.futures
import json
import signal
from pathlib import Path

import httpx
import pytest

from chatfleet.engine.step_trace import read_trace
from tests.server.conftest import metric
from tests.server_process import start_server, wait_until

pytestmark = pytest.mark.e2e  # starts its own servers

LONG = {
    "messages": [{"role": "user", "content": "Write a long story about the sea."}],
    "max_tokens": 400,
    "ignore_eos": True,
    "stream": True,
}


def test_disconnect_mid_stream_aborts_and_frees_blocks(server):
    url = server.base_url
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", f"{url}/v1/chat/completions", json=LONG) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            got = [next(lines) for _ in range(6)]
            assert any(line.startswith("data: ") for line in got)
            assert metric(url, "vllm:num_requests_running") == 1
    assert wait_until(lambda: metric(url, "vllm:num_requests_running") == 0)
    assert wait_until(lambda: metric(url, "vllm:kv_cache_usage_perc") == 0.0)


def test_a_client_gone_before_its_first_token_gives_its_slot_back(tmp_path):
    """One running slot and one queue place. A client whose stream is still queued leaves;
    when its first token comes, the response that nobody reads still ends: its engine
    request is aborted and its place is free again."""
    srv = start_server(tmp_path, "--max-num-seqs", "1", "--max-queue-len", "1")
    url = f"{srv.base_url}/v1/chat/completions"
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            first = pool.submit(
                httpx.post, url, json={**LONG, "max_tokens": 600, "stream": False}, timeout=120
            )
            assert wait_until(lambda: metric(srv.base_url, "vllm:num_requests_running") == 1)
            with pytest.raises(httpx.ReadTimeout):  # queued behind the first: no byte yet
                httpx.post(url, json=LONG, timeout=httpx.Timeout(120, read=0.5))
            assert first.result().status_code == 200
        assert wait_until(lambda: metric(srv.base_url, "vllm:num_requests_running") == 0)
        short = {**LONG, "max_tokens": 8, "stream": False}
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            codes = list(pool.map(lambda _: httpx.post(url, json=short, timeout=120), range(2)))
        assert [r.status_code for r in codes] == [200, 200]
    finally:
        srv.stop()


def test_overload_gets_503_with_retry_after(tmp_path):
    srv = start_server(tmp_path, "--max-num-seqs", "2", "--max-queue-len", "2")
    body = {
        "messages": [{"role": "user", "content": "Count to twenty."}],
        "max_tokens": 40,
        "temperature": 0,
        "ignore_eos": True,
    }
    try:

        def call(_):
            return httpx.post(f"{srv.base_url}/v1/chat/completions", json=body, timeout=120)

        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            results = list(pool.map(call, range(12)))
        codes = [r.status_code for r in results]
        assert set(codes) <= {200, 503} and codes.count(503) > 0 and codes.count(200) >= 4
        texts = set()
        for r in results:
            if r.status_code == 503:
                assert int(r.headers["retry-after"]) >= 1
                assert r.json()["error"]["code"] == "overloaded"
            else:
                assert r.json()["usage"]["completion_tokens"] == 40
                texts.add(r.json()["choices"][0]["message"]["content"])
        assert len(texts) == 1  # greedy: every admitted request got the same, full answer
        assert httpx.get(f"{srv.base_url}/health", timeout=10).status_code == 200
    finally:
        assert srv.stop() == 0


def test_sigterm_drains_in_flight_then_exits_zero(tmp_path):
    srv = start_server(tmp_path, "--shutdown-timeout", "60")
    body = {**LONG, "max_tokens": 60}
    with httpx.Client(timeout=120) as client:
        with client.stream("POST", f"{srv.base_url}/v1/chat/completions", json=body) as r:
            lines = r.iter_lines()
            next(lines)
            srv.proc.send_signal(signal.SIGTERM)
            assert wait_until(
                lambda: httpx.get(f"{srv.base_url}/ready", timeout=5).status_code == 503,
                timeout_s=10,
            )
            refused = httpx.post(
                f"{srv.base_url}/v1/chat/completions",
                timeout=10,
                json={"messages": [{"role": "user", "content": "hi"}]},
            )
            assert refused.status_code == 503 and "retry-after" in refused.headers
            rest = [line for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]"
    finish = [json.loads(x[6:]) for x in rest[:-1]]
    assert finish[-1]["choices"][0]["finish_reason"] == "length"
    assert srv.proc.wait(60) == 0


def test_engine_death_errors_in_flight_and_exits_nonzero(tmp_path):
    srv = start_server(tmp_path, env={"CHATFLEET_FAULT_INJECT_STEP": "20"})
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", f"{srv.base_url}/v1/chat/completions", json=LONG) as r:
            events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2][6:])
    assert error["error"]["code"] == "engine_dead"
    assert srv.proc.wait(30) == 1
    assert "engine died" in srv.log()


def test_request_timeout_aborts_with_clear_error(tmp_path):
    srv = start_server(tmp_path, "--request-timeout", "2")
    try:
        body = {**LONG, "max_tokens": 2000, "stream": False}
        r = httpx.post(f"{srv.base_url}/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 504 and r.json()["error"]["code"] == "request_timeout"
        with httpx.stream(
            "POST",
            f"{srv.base_url}/v1/chat/completions",
            timeout=60,
            json={**LONG, "max_tokens": 2000},
        ) as s:
            events = [line for line in s.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        assert json.loads(events[-2][6:])["error"]["code"] == "request_timeout"
        assert wait_until(lambda: metric(srv.base_url, "vllm:num_requests_running") == 0)
    finally:
        assert srv.stop() == 0


VLLM_METRICS = [
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:num_preemptions_total",
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:request_success_total",
    "vllm:time_to_first_token_seconds_count",
    "vllm:inter_token_latency_seconds_count",
    "vllm:e2e_request_latency_seconds_count",
    "vllm:request_queue_time_seconds_count",
]


def test_metrics_use_vllm_names_and_count_requests(server):
    before = metric(server.base_url, "vllm:request_success_total") if _has_success(server) else 0
    prompt = "Tell me about " + "the history of the printing press " * 8
    for _ in range(2):  # the second request hits the first one's prompt blocks
        r = httpx.post(
            f"{server.base_url}/v1/completions",
            timeout=60,
            json={"prompt": prompt, "max_tokens": 5, "temperature": 0},
        )
        assert r.status_code == 200
    for name in VLLM_METRICS:
        metric(server.base_url, name)  # asserts presence
    assert metric(server.base_url, "vllm:request_success_total") == before + 2
    assert metric(server.base_url, "vllm:prefix_cache_hits_total") > 0
    assert metric(server.base_url, "vllm:generation_tokens_total") >= 10


def _has_success(server) -> bool:
    return "vllm:request_success_total{" in httpx.get(f"{server.base_url}/metrics").text


def test_step_trace_records_every_step_of_a_request(server):
    """`serve --step-trace`: a lone request's steps are its prompt, in chunks, then one
    decode row per further token (the fixture's path has the server's pid in it)."""
    trace = Path(server.log_path).parent / f"steps-{server.proc.pid}.jsonl"
    body = {"prompt": "The sea is", "max_tokens": 5, "ignore_eos": True, "temperature": 0}
    # Alone on the server: wait for requests of earlier tests to end.
    assert wait_until(lambda: metric(server.base_url, "vllm:num_requests_running") == 0)
    before = len(read_trace(str(trace))) if trace.exists() else 0
    r = httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    prompt = r.json()["usage"]["prompt_tokens"]
    # Rows are flushed at least once a second while the server runs.
    assert wait_until(lambda: len(read_trace(str(trace))) >= before + 5, timeout_s=10)
    rows = read_trace(str(trace))[before:]
    assert [len(row["seqs"]) for row in rows] == [1] * 5
    assert rows[0]["seqs"] == [[prompt, 0, 1]]
    assert [row["seqs"][0] for row in rows[1:]] == [[1, prompt + i, 1] for i in range(4)]
    assert all(row["s"] > 0 for row in rows)
    # The engine went straight on after every step but the last, then idled.
    assert [row["more"] for row in rows] == [1, 1, 1, 1, 0]
    assert all(b["t"] >= a["t"] + a["s"] for a, b in zip(rows, rows[1:], strict=False))
