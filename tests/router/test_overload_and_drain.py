"""A small spare replica (one sequence at a time, no queue) next to a normal one: its 503s are
retried on the other replica; alone, its 503 and Retry-After reach the client; and once it is
draining (SIGTERM: /ready turns 503) it gets no new requests while its stream finishes.

The drain test stops the spare, so it runs last (pytest keeps file order).
"""

from __future__ import annotations

import concurrent.futures
import signal
from collections.abc import Iterator

import httpx
import pytest

from tests.router.conftest import (
    MODEL,
    launch_servers,
    replica_states,
    router_metric,
    stream_chat,
    wait_until,
)
from tests.server_process import ServerProcess

SPARE_ARGS = ("--max-num-seqs", "1", "--max-queue-len", "0", "--shutdown-timeout", "60")


@pytest.fixture(scope="module")
def spare(tmp_path_factory) -> Iterator[ServerProcess]:
    (server,) = launch_servers(tmp_path_factory.mktemp("spare"), 1, *SPARE_ARGS)
    yield server
    server.stop()


def test_refusals_are_retried_on_another_replica_before_being_passed_on(
    replicas, spare, router_factory
):
    router = router_factory([replicas[0], spare], "--policy", "round_robin")
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Count."}]}
    body.update(max_tokens=24, ignore_eos=True)

    def call(url):
        return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(call, [router.base_url] * 6))
    assert [r.status_code for r in results] == [200] * 6
    assert router_metric(router, "chatfleet_router_retries_total") >= 1
    # With nowhere else to go, the replica's own 503 and Retry-After reach the client.
    alone = router_factory([spare], "--policy", "round_robin")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(call, [alone.base_url] * 4))
    refused = [r for r in results if r.status_code == 503]
    assert refused and all(r.headers["retry-after"] for r in refused)
    assert refused[0].json()["error"]["code"] == "overloaded"
    assert {r.status_code for r in results} == {200, 503}


def test_draining_replica_gets_no_new_requests_and_finishes_its_stream(
    replicas, spare, router_factory
):
    router = router_factory([replicas[0], spare], "--policy", "round_robin")
    started: list = []
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        long = [pool.submit(stream_chat, router.base_url, 96, started) for _ in range(3)]
        assert wait_until(lambda: spare.base_url in started, timeout_s=60)
        spare.proc.send_signal(signal.SIGTERM)  # the replica starts draining
        assert wait_until(lambda: replica_states(router)[spare.base_url]["draining"], 10)
        routed_before = replica_states(router)[spare.base_url]["num_routed"]
        new = [stream_chat(router.base_url, 4) for _ in range(4)]
        results = [f.result() for f in long]
    # New requests all went to the other replica; none was even tried on the drainer.
    assert {r["replica"] for r in new} == {replicas[0].base_url}
    assert all(r["status"] == 200 and r["done"] and not r["error"] for r in new)
    assert replica_states(router)[spare.base_url]["num_routed"] == routed_before
    # The stream it was serving when it began draining ran to its last token.
    on_spare = [r for r in results if r["replica"] == spare.base_url]
    assert len(on_spare) == 1
    assert on_spare[0]["done"] and on_spare[0]["completion_tokens"] == 96
    assert all(r["status"] == 200 and not r["error"] for r in results)
    assert spare.proc.wait(60) == 0  # then it exited cleanly
