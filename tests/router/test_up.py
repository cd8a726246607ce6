"""`chatfleet up` over three replicas (two sequences each, autoscaling between 3 and 4).

Kill one under steady load: requests that had not begun streaming are retried elsewhere and
succeed; streams cut on the dead replica continue on another one; the replica is ejected,
restarted by `up` and re-admitted. Then queue requests: `up` adds a fourth replica, and drains
and removes one when the load falls. The tests share one fleet and run in file order.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

import pytest

from tests.router.conftest import (
    FAST_HEALTH,
    replica_states,
    router_metric,
    stream_chat,
    wait_until,
)
from tests.server_process import free_port, launch, wait_ready

pytestmark = pytest.mark.e2e  # starts its own servers

# At most 3 streams on 2 eligible replicas of 2 slots: never a queue, so no scale-up.
NUM_WORKERS = 3
SCALING = ("--min-replicas", "3", "--max-replicas", "4", "--scale-interval", "0.5")
SCALING += ("--scale-up-queue-len", "0.5", "--scale-up-after", "1", "--scale-cooldown", "1")
SCALING += ("--scale-down-after", "3", "--scale-down-in-flight", "2")


@contextlib.contextmanager
def running_up(tmp_path, num_replicas: int, *args: str, max_num_seqs: int = 16):
    """`chatfleet up` with fast health reactions, yielded once its replicas are eligible;
    on exit it is stopped with SIGTERM and must have stopped its replicas too."""
    port = free_port()
    replica_args = f"--kv-cache-memory 128MiB --max-num-seqs {max_num_seqs}"
    up = launch(
        tmp_path,
        "up",
        port,
        *("up", "--port", str(port), "--replicas", str(num_replicas), *FAST_HEALTH),
        *("--replica-port-start", str(free_port()), "--replica-threads", "1"),
        *("--replica-args", replica_args, "--log-dir", str(tmp_path / "replicas"), *args),
    )
    pids = []
    try:
        wait_ready(up, "/health")
        assert wait_until(lambda: num_eligible(up) == num_replicas, 180), replica_states(up)
        yield up
    finally:
        if up.proc.poll() is None:
            pids = [s.get("pid") for s in replica_states(up).values()]
        assert up.stop(timeout_s=90) == 0, up.log()
        assert not any(pid and _alive(pid) for pid in pids), "up left a replica running"


def num_eligible(up) -> int:
    return sum(s["eligible"] for s in replica_states(up).values())


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("up")
    with running_up(tmp_path, 3, "--policy", "round_robin", *SCALING, max_num_seqs=2) as up:
        yield up


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_killed_replica_fails_over_is_restarted_and_readmitted(fleet):
    results: list[dict] = []
    started: list = []
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            results.append(stream_chat(fleet.base_url, 32, started))

    threads = [threading.Thread(target=worker) for _ in range(NUM_WORKERS)]
    for t in threads:
        t.start()
    try:
        victim_url = sorted(replica_states(fleet))[1]
        victim = replica_states(fleet)[victim_url]

        def streaming_on_victim() -> int:
            done = sum(1 for r in list(results) if r["replica"] == victim_url and r["streamed"])
            return started.count(victim_url) - done

        assert wait_until(lambda: streaming_on_victim() >= 1, 60)
        num_before = len(started)
        os.kill(victim["pid"], signal.SIGKILL)
        # Keep the load on while the router notices and fails over.
        assert wait_until(lambda: len(started) >= num_before + 3 * NUM_WORKERS, 60)
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    assert not any(t.is_alive() for t in threads)

    # Nothing is lost: every request got a 200 and finished, those streaming from the killed
    # replica too (resumed on another replica, router/relay.py).
    assert all(r["status"] == 200 and "exception" not in r for r in results), results
    assert not any(r["error"] for r in results), results
    assert all(r["done"] and r["completion_tokens"] == 32 for r in results)
    cut = router_metric(fleet, "chatfleet_router_stream_errors_total")
    assert cut >= 1, "the kill should have cut at least one stream"
    # each attempted and succeeded
    assert router_metric(fleet, "chatfleet_router_stream_resumptions_total") == 2 * cut

    # Ejected, restarted by `up` (a new process), then re-admitted after the cool-down.
    assert router_metric(fleet, "chatfleet_router_ejections_total") >= 1

    def readmitted() -> bool:
        s = replica_states(fleet)[victim_url]
        return s["num_restarts"] >= 1 and s["pid"] != victim["pid"] and s["eligible"]

    assert wait_until(readmitted, timeout_s=180), replica_states(fleet)
    assert router_metric(fleet, "chatfleet_router_readmissions_total") >= 1
    served = {stream_chat(fleet.base_url, 2)["replica"] for _ in range(6)}
    assert victim_url in served and len(served) == 3


def test_up_adds_a_replica_when_requests_queue_and_drains_one_when_idle(fleet):
    results: list[dict] = []
    stop, trickle = threading.Event(), threading.Event()

    def worker(index: int) -> None:
        while not stop.is_set() and not (index and trickle.is_set()):
            results.append(stream_chat(fleet.base_url, 24))

    # Nine streams on three replicas of two slots each: a queue builds up.
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(9)]
    for t in threads:
        t.start()
    try:
        assert wait_until(lambda: num_eligible(fleet) == 4, 180), replica_states(fleet)

        def all_serve() -> bool:
            return all(s["num_routed"] > 0 for s in replica_states(fleet).values())

        assert wait_until(all_serve, 30)  # the new replica takes requests
        # Back to a trickle (one worker): idle enough to scale in, which drains first.
        trickle.set()
        assert wait_until(lambda: len(replica_states(fleet)) == 3, 60), replica_states(fleet)
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    assert all(r["status"] == 200 and r["done"] and not r["error"] for r in results)
    assert "scaled up" in fleet.log() and "scaled down" in fleet.log()
