"""Serve's autoscaler, configured from --min-replicas/--max-replicas: up under load within
the bounds, back down when the load stops, every request served."""

from __future__ import annotations

import threading
import time

from tests.ray.conftest import wait_until
from tests.router.conftest import stream_chat


def test_load_scales_out_within_bounds_and_back(two_nodes, fleet_factory):
    fleet = fleet_factory(
        num_replicas=1,
        min_replicas=1,
        max_replicas=3,
        target_ongoing_requests=1,
        upscale_delay_s=1,
        downscale_delay_s=4,
    )
    # A replica Serve replaced during the deploy can stay listed for a moment (seen once: 2).
    assert wait_until(lambda: fleet.num_replicas() == 1, 60, interval_s=1), fleet.num_replicas()
    results: list[dict] = []
    stop = threading.Event()

    def client(i: int) -> None:  # one request in flight at a time, until told to stop
        n = 0
        while not stop.is_set():
            results.append(stream_chat(fleet.url, 48, content=f"Client {i}, request {n}."))
            n += 1

    clients = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for t in clients:
        t.start()
    counts: list[int] = []

    def scaled_out() -> bool:
        counts.append(fleet.num_replicas())
        return counts[-1] >= 2

    try:
        assert wait_until(scaled_out, 120, interval_s=1), counts
        time.sleep(5)  # keep the load a little longer: no count past the ceiling
        counts.append(fleet.num_replicas())
    finally:
        stop.set()
        for t in clients:
            t.join(120)
    assert max(counts) <= 3, counts
    assert wait_until(lambda: fleet.num_replicas() == 1, 120, interval_s=1)
    assert results and all(r["status"] == 200 and r["done"] and not r["error"] for r in results)
