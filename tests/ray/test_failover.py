"""Killing the worker node (its raylet) under a steady load: nothing is lost or stuck, and the
streams in flight on it continue on the surviving replica (RayEngineClient resumes them)."""

from __future__ import annotations

import threading
import time

from tests.ray.conftest import wait_until
from tests.router.conftest import stream_chat

LONG_TOKENS, SHORT_TOKENS = 150, 16


def test_worker_node_death_loses_no_request(two_nodes, fleet_factory):
    fleet = fleet_factory(num_replicas=2)
    assert len({s["node_id"] for s in fleet.stats().values()}) == 2
    results: list[dict] = []
    started: list = []

    def run(max_tokens: int, content: str) -> None:
        result = stream_chat(fleet.url, max_tokens, started, content=content)
        results.append({**result, "max_tokens": max_tokens})

    # In flight on both replicas when the node dies: those on the dead one are resumed.
    threads = [
        threading.Thread(target=run, args=(LONG_TOKENS, f"Long story {i} about the sea."))
        for i in range(4)
    ]
    for t in threads:
        t.start()
    assert wait_until(lambda: len(started) == 4, 60), "the long streams did not start"

    # A steady trickle of new requests before, during and after the kill.
    def trickle() -> None:
        for i in range(16):
            t = threading.Thread(target=run, args=(SHORT_TOKENS, f"Short question {i}?"))
            t.start()
            threads.append(t)
            time.sleep(0.5)

    trickler = threading.Thread(target=trickle)
    trickler.start()
    time.sleep(1.5)
    two_nodes.kill_worker_node()
    killed_at = time.monotonic()
    trickler.join(30)
    for t in threads:
        t.join(180)
    assert not any(t.is_alive() for t in threads), "a request hung"

    assert len(results) == 20
    for r in results:  # every stream ends with [DONE], whole, those cut mid-way too
        assert r["status"] == 200 and r["done"] and not r["error"], r
        assert r["completion_tokens"] == r["max_tokens"], r

    # Serve restores the replica count, on the surviving (head) node.
    def restored() -> bool:
        stats = fleet.stats()
        return len(stats) == 2 and len({s["node_id"] for s in stats.values()}) == 1

    assert wait_until(restored, 120, interval_s=2), fleet.stats()
    # For docs/deploy.md (run with -s): what the failover cost.
    print(
        f"failover: 20 of 20 requests completed, 2 replicas again after "
        f"{time.monotonic() - killed_at:.0f} s"
    )
    r = stream_chat(fleet.url, SHORT_TOKENS, content="After the failover?")
    assert r["done"] and not r["error"] and r["completion_tokens"] == SHORT_TOKENS
