"""Replica pool: admission, passive ejection, cool-down re-admission, draining, snapshots.

Time is passed in, so the health state machine is checked without sleeping."""

from __future__ import annotations

from chatfleet.config.router_config import HealthConfig
from chatfleet.router.pool import ProbeResult, ReplicaLoad, ReplicaPool

OK = ProbeResult(is_healthy=True, is_ready=True)
DOWN = ProbeResult(is_healthy=False)


def make_pool(*ids: str) -> tuple[ReplicaPool, list[tuple[str, str]]]:
    events: list[tuple[str, str]] = []
    pool = ReplicaPool(
        HealthConfig(max_failures=3, cooldown_s=5.0), lambda e, r: events.append((e, r))
    )
    for rid in ids:
        pool.add(rid)
    return pool, events


def eligible(pool: ReplicaPool) -> list[str]:
    return [r.replica_id for r in pool.snapshot()]


def test_replicas_are_admitted_after_their_first_good_probe():
    pool, events = make_pool("a", "b")
    assert eligible(pool) == []
    for _ in range(5):  # still loading: not counted as failures, never ejected
        pool.record_probe("a", DOWN, 0.0)
    pool.record_probe("a", OK, 1.0)
    assert eligible(pool) == ["a"] and events == []


def test_consecutive_failures_eject_and_a_probe_after_the_cooldown_readmits():
    pool, events = make_pool("a", "b")
    for rid in "ab":
        pool.record_probe(rid, OK, 0.0)
    pool.record_failure("a", 1.0)
    pool.record_failure("a", 1.0)
    pool.record_success("a")  # the streak must be consecutive
    for _ in range(3):
        pool.record_failure("a", 2.0)
    assert eligible(pool) == ["b"] and events == [("ejected", "a")]
    pool.record_probe("a", OK, 4.0)  # healthy again, but the cool-down runs to 7.0
    assert eligible(pool) == ["b"]
    pool.record_probe("a", DOWN, 6.0)  # a failure while ejected restarts the cool-down
    pool.record_probe("a", OK, 9.0)
    assert eligible(pool) == ["b"]
    pool.record_probe("a", OK, 11.0)
    assert eligible(pool) == ["a", "b"]
    assert events == [("ejected", "a"), ("readmitted", "a")]
    assert pool.state("a").num_ejections == 1


def test_draining_replicas_get_nothing_new_until_ready_again():
    pool, _ = make_pool("a", "b")
    for rid in "ab":
        pool.record_probe(rid, OK, 0.0)
    pool.record_probe("a", ProbeResult(True, is_ready=False), 1.0)
    assert eligible(pool) == ["b"]
    pool.record_probe("a", ProbeResult(True, is_ready=None), 2.0)  # /ready did not answer
    assert eligible(pool) == ["b"]
    pool.record_probe("a", OK, 3.0)
    assert eligible(pool) == ["a", "b"]
    pool.mark_draining("b")  # a 503 "shutting_down" from the replica itself
    assert eligible(pool) == ["a"]
    pool.retire("a")  # the router is removing it: sticky, whatever probes say
    pool.record_probe("a", OK, 4.0)
    assert eligible(pool) == []


def test_snapshot_carries_load_and_excludes_tried_replicas():
    pool, _ = make_pool("b", "a", "c")
    for rid in "abc":
        pool.record_probe(rid, OK, 0.0)
    load = ReplicaLoad(num_waiting=4, num_running=2, kv_cache_usage=0.5)
    pool.record_probe("b", ProbeResult(True, True, load), 1.0)
    pool.acquire("b")
    pool.acquire("b")
    pool.release("b")
    views = pool.snapshot(exclude=["c"])
    assert [v.replica_id for v in views] == ["a", "b"]
    assert views[1].num_in_flight == 1 and views[1].num_waiting == 4
    assert views[1].load == 1 + 4 + 0.5
    pool.remove("b")
    pool.release("b")  # a late release for a removed replica is ignored
    assert pool.ids() == ["a", "c"]
