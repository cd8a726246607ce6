"""Routing policies: pure functions of (request, snapshot of eligible replicas) -> decision.

A policy never does I/O, never awaits and never mutates anything: what it needs to remember
(round robin's turn, which replica holds which prefix) arrives in the `RouteRequest`, which the
router fills from its own state. Policies are picked by name from `POLICIES`.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar

from chatfleet.config.router_config import PolicyConfig
from chatfleet.router.snapshot import ReplicaView, RouteDecision, RouteRequest


class RoutingPolicy(ABC):
    """Chooses one replica. `replicas` is non-empty, holds only eligible replicas (healthy,
    not draining, not yet tried for this request) and is sorted by replica_id."""

    name: ClassVar[str]

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config

    @abstractmethod
    def choose(self, request: RouteRequest, replicas: Sequence[ReplicaView]) -> RouteDecision:
        """The decision; pure (same inputs, same answer)."""


def least_loaded(request: RouteRequest, replicas: Sequence[ReplicaView]) -> ReplicaView:
    """The replica with the lowest `load`; ties rotate with the request's seq, so equal replicas
    share the work instead of the first one taking it all."""
    assert replicas, "policies are only asked with at least one eligible replica"
    n = len(replicas)
    i = min(range(n), key=lambda k: (replicas[k].load, (k - request.seq) % n))
    return replicas[i]


class RoundRobinPolicy(RoutingPolicy):
    name = "round_robin"

    def choose(self, request: RouteRequest, replicas: Sequence[ReplicaView]) -> RouteDecision:
        replica = replicas[request.seq % len(replicas)]
        return RouteDecision(replica.replica_id, "round_robin")


class LeastLoadedPolicy(RoutingPolicy):
    """In-flight requests plus the replica's own queue and KV usage (see ReplicaView.load)."""

    name = "least_loaded"

    def choose(self, request: RouteRequest, replicas: Sequence[ReplicaView]) -> RouteDecision:
        return RouteDecision(least_loaded(request, replicas).replica_id, "least_loaded")


class CacheAwarePolicy(RoutingPolicy):
    """The replica with the longest prefix match, among those whose load is not too far above
    the least loaded one's; if none qualifies, the least loaded (reason "imbalance"); if no
    replica matches at least `min_match_ratio` of the prompt, the least loaded ("no_match")."""

    name = "cache_aware"

    def is_overloaded(self, load: float, min_load: float) -> bool:
        c = self.config
        return load - min_load > c.balance_abs_threshold and load > c.balance_rel_threshold * (
            min_load
        )

    def choose(self, request: RouteRequest, replicas: Sequence[ReplicaView]) -> RouteDecision:
        coldest = least_loaded(request, replicas)
        matched = request.matched_blocks
        min_blocks = max(1, self.config.min_match_ratio * request.num_prefix_blocks)
        holders = [r for r in replicas if matched.get(r.replica_id, 0) >= min_blocks]
        if not holders:
            return RouteDecision(coldest.replica_id, "no_match")
        fit = [r for r in holders if not self.is_overloaded(r.load, coldest.load)]
        if not fit:
            return RouteDecision(
                coldest.replica_id, "imbalance", matched.get(coldest.replica_id, 0)
            )
        best = max(fit, key=lambda r: (matched[r.replica_id], -r.load))
        return RouteDecision(best.replica_id, "prefix_match", matched[best.replica_id])


def hash64(text: str) -> int:
    """A hash that is the same in every process (Python's str hash is salted per process)."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


@functools.lru_cache(maxsize=32)
def hash_ring(replica_ids: tuple[str, ...], vnodes: int) -> tuple[list[int], list[str]]:
    """Consistent-hash ring: `vnodes` points per replica, sorted; (points, owner of each)."""
    ring = sorted((hash64(f"{rid}#{v}"), rid) for rid in replica_ids for v in range(vnodes))
    return [p for p, _ in ring], [rid for _, rid in ring]


class SessionPolicy(RoutingPolicy):
    """Requests with the same session key go to the same replica while it is eligible.

    The key is placed on a consistent-hash ring of the eligible replicas: the first replica
    point clockwise of it wins. When a replica leaves, only its sessions move; when one joins,
    it takes about 1/N of the sessions. Requests without a key go to the least loaded replica.
    """

    name = "session"

    def choose(self, request: RouteRequest, replicas: Sequence[ReplicaView]) -> RouteDecision:
        if request.session_key is None:
            return RouteDecision(least_loaded(request, replicas).replica_id, "no_session_key")
        ids = tuple(r.replica_id for r in replicas)
        points, owners = hash_ring(ids, self.config.session_vnodes)
        i = bisect.bisect(points, hash64(request.session_key)) % len(points)
        return RouteDecision(owners[i], "session")


POLICIES: dict[str, Callable[[PolicyConfig], RoutingPolicy]] = {
    p.name: p for p in (RoundRobinPolicy, LeastLoadedPolicy, CacheAwarePolicy, SessionPolicy)
}


def make_policy(config: PolicyConfig) -> RoutingPolicy:
    """The policy named by config.name; ValueError for an unknown name."""
    if config.name not in POLICIES:
        raise ValueError(f"unknown policy {config.name!r}; choose from {sorted(POLICIES)}")
    return POLICIES[config.name](config)
