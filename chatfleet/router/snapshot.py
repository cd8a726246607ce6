"""Immutable inputs and outputs of a routing decision."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ReplicaView:
    """One eligible replica as a policy sees it, copied from the pool for one decision."""

    replica_id: str  # the replica's base URL
    num_in_flight: int = 0  # requests this router has open on it now (live)
    num_waiting: int = 0  # the replica's own queue, scraped from its /metrics
    num_running: int = 0  # scraped
    kv_cache_usage: float = 0.0  # 0-1, scraped

    @property
    def load(self) -> float:
        """Requests in flight plus those queued on the replica; KV usage (0-1) breaks ties.

        NOTE: requests the router sent that still wait on the replica are counted twice, on
        purpose: a queued request is worse than a running one.
        """
        return self.num_in_flight + self.num_waiting + self.kv_cache_usage


@dataclass(frozen=True)
class RouteRequest:
    """What a policy may know about a request."""

    seq: int  # the router's arrival counter: round robin's turn, the tie-breaker's offset
    num_prefix_blocks: int = 0  # prompt blocks the prefix index was asked about
    # replica_id -> leading prompt blocks the router sent it before (the prefix index's guess
    # of what is in that replica's KV cache); replicas with no match are absent.
    matched_blocks: Mapping[str, int] = field(default_factory=dict)
    session_key: str | None = None  # conversation / user key, if the request has one


@dataclass(frozen=True)
class RouteDecision:
    replica_id: str
    reason: str  # why, for metrics: "round_robin", "least_loaded", "prefix_match", ...
    num_matched_blocks: int = 0  # the chosen replica's prefix match, per the index
