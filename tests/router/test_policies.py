"""Routing policies are pure functions of (request, replica snapshot)."""

from __future__ import annotations

import dataclasses

import pytest

from chatfleet.config.router_config import PolicyConfig
from chatfleet.router.policies import POLICIES, make_policy
from chatfleet.router.snapshot import ReplicaView, RouteRequest

A, B, C, D = "http://a", "http://b", "http://c", "http://d"


def views(*loads: tuple[str, int]) -> tuple[ReplicaView, ...]:
    return tuple(ReplicaView(rid, num_in_flight=n) for rid, n in loads)


def choose(name: str, request: RouteRequest, replicas, **config):
    policy = make_policy(PolicyConfig(name=name, **config))
    return policy.choose(request, replicas)


def test_registry_has_every_policy_and_rejects_unknown_names():
    assert sorted(POLICIES) == ["cache_aware", "least_loaded", "round_robin", "session"]
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy(PolicyConfig(name="random"))


def test_round_robin_takes_turns_by_arrival_number():
    replicas = views((A, 9), (B, 0), (C, 0))
    chosen = [choose("round_robin", RouteRequest(seq), replicas).replica_id for seq in range(6)]
    assert chosen == [A, B, C, A, B, C]


def test_least_loaded_counts_in_flight_queue_and_kv_usage():
    replicas = (
        ReplicaView(A, num_in_flight=2),
        ReplicaView(B, num_in_flight=1, num_waiting=3),  # queued on the replica itself
        ReplicaView(C, num_in_flight=2, kv_cache_usage=0.5),
    )
    assert choose("least_loaded", RouteRequest(0), replicas).replica_id == A
    replicas = (ReplicaView(A, 1, kv_cache_usage=0.9), ReplicaView(B, 1, kv_cache_usage=0.1))
    assert choose("least_loaded", RouteRequest(0), replicas).replica_id == B


def test_least_loaded_spreads_ties_instead_of_piling_on_the_first():
    replicas = views((A, 0), (B, 0), (C, 0))
    chosen = {choose("least_loaded", RouteRequest(seq), replicas).replica_id for seq in range(3)}
    assert chosen == {A, B, C}


def test_cache_aware_prefers_the_longest_prefix_match():
    replicas = views((A, 3), (B, 2), (C, 0))
    request = RouteRequest(0, num_prefix_blocks=10, matched_blocks={A: 4, B: 9})
    decision = choose("cache_aware", request, replicas)
    assert (decision.replica_id, decision.reason, decision.num_matched_blocks) == (
        B,
        "prefix_match",
        9,
    )


def test_cache_aware_without_a_useful_match_is_least_loaded():
    replicas = views((A, 3), (B, 2), (C, 1))
    assert choose("cache_aware", RouteRequest(0, 10), replicas).reason == "no_match"
    # A one-block match (say a system prompt every request shares) is below min_match_ratio.
    request = RouteRequest(0, num_prefix_blocks=10, matched_blocks={A: 1})
    decision = choose("cache_aware", request, replicas, min_match_ratio=0.25)
    assert (decision.replica_id, decision.reason) == (C, "no_match")


def test_cache_aware_leaves_an_overloaded_holder_once_the_threshold_trips():
    request = RouteRequest(0, num_prefix_blocks=10, matched_blocks={A: 10})
    config = {"balance_abs_threshold": 2, "balance_rel_threshold": 1.5}
    # Within the threshold (3 - 1 = 2, not above 2): stick with the cache.
    assert choose("cache_aware", request, views((A, 3), (B, 1)), **config).replica_id == A
    # Beyond it: the least loaded replica, reason "imbalance".
    decision = choose("cache_aware", request, views((A, 4), (B, 1)), **config)
    assert (decision.replica_id, decision.reason) == (B, "imbalance")
    # Both conditions must hold: 12 vs 9 is over abs 2 but not over rel 1.5x.
    assert choose("cache_aware", request, views((A, 12), (B, 9)), **config).replica_id == A


def test_cache_aware_prefers_another_holder_of_the_prefix_over_a_cold_replica():
    request = RouteRequest(0, num_prefix_blocks=10, matched_blocks={A: 10, B: 10})
    replicas = views((A, 9), (B, 2), (C, 0))
    decision = choose("cache_aware", request, replicas, balance_abs_threshold=4)
    assert (decision.replica_id, decision.reason) == (B, "prefix_match")


def test_session_keys_stick_and_consistent_hashing_moves_few_sessions():
    four = views((A, 0), (B, 0), (C, 0), (D, 0))
    keys = [f"user-{i}" for i in range(400)]

    def owners(replicas, load: int = 0) -> dict[str, str]:
        replicas = tuple(dataclasses.replace(r, num_in_flight=load) for r in replicas)
        return {
            k: choose("session", RouteRequest(0, session_key=k), replicas).replica_id for k in keys
        }

    before = owners(four)
    assert before == owners(four, load=50)  # load does not move a session
    assert len(set(before.values())) == 4
    # D leaves: only D's sessions move.
    after = owners(four[:3])
    moved = {k for k in keys if before[k] != after[k]}
    assert moved == {k for k in keys if before[k] == D}
    # D comes back: everything returns; a fifth replica takes roughly a fifth.
    assert owners(four) == before
    five = owners((*four, ReplicaView("http://e")))
    assert 0.1 < sum(before[k] != five[k] for k in keys) / len(keys) < 0.3


def test_session_without_a_key_is_least_loaded():
    decision = choose("session", RouteRequest(0), views((A, 5), (B, 1)))
    assert (decision.replica_id, decision.reason) == (B, "no_session_key")


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_choose_is_pure(name):
    replicas = views((A, 2), (B, 1), (C, 3))
    request = RouteRequest(7, num_prefix_blocks=4, matched_blocks={C: 4}, session_key="s")
    snapshot = (request, replicas)
    first = choose(name, request, replicas)
    assert all(choose(name, request, replicas) == first for _ in range(5))
    assert (request, replicas) == snapshot
