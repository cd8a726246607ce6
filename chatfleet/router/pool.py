"""ReplicaPool: the router's state of its replicas (membership, load, health) and snapshots.

Health is a small state machine per replica, driven by probe results and proxied requests:

    (added) --first good probe--> eligible --max_failures in a row--> ejected
                                     ^                                   |
                                     +--- good probe after cooldown -----+
    eligible --/ready 503 or a 503 "shutting_down"--> draining (no new requests; in-flight go on)
    eligible --retire()--> retiring (the router is removing it; sticky)

Everything runs on one event loop; time is passed in (`now_s`, monotonic) so the machine is
testable without sleeping.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from chatfleet.config.router_config import HealthConfig
from chatfleet.router.snapshot import ReplicaView


@dataclass(frozen=True)
class ReplicaLoad:
    """Values scraped from a replica's /metrics."""

    num_waiting: int = 0
    num_running: int = 0
    kv_cache_usage: float = 0.0
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0


@dataclass(frozen=True)
class ProbeResult:
    is_healthy: bool  # /health said 200
    is_ready: bool | None = None  # /ready said 200; None: unknown (it did not answer)
    load: ReplicaLoad | None = None


@dataclass
class ReplicaState:
    """One replica; mutated only by ReplicaPool."""

    replica_id: str  # base URL
    num_in_flight: int = 0
    load: ReplicaLoad = dataclasses.field(default_factory=ReplicaLoad)
    has_probed_ok: bool = False  # admitted only after a first good /health
    is_draining: bool = False  # the replica says it is shutting down
    is_retiring: bool = False  # the router is removing it
    consecutive_failures: int = 0
    ejected_until_s: float | None = None
    num_ejections: int = 0
    num_routed: int = 0  # requests sent to it (attempts included)

    @property
    def is_ejected(self) -> bool:
        return self.ejected_until_s is not None

    @property
    def is_eligible(self) -> bool:
        return self.has_probed_ok and not (self.is_ejected or self.is_draining or self.is_retiring)

    def view(self) -> ReplicaView:
        return ReplicaView(
            self.replica_id,
            self.num_in_flight,
            self.load.num_waiting,
            self.load.num_running,
            self.load.kv_cache_usage,
        )


class ReplicaPool:
    """Membership, in-flight counts, scraped load and health of the router's replicas.

    `on_event(event, replica_id)` is called for "ejected" and "readmitted".
    """

    def __init__(
        self, config: HealthConfig, on_event: Callable[[str, str], None] | None = None
    ) -> None:
        self.config = config
        self.on_event = on_event or (lambda event, replica_id: None)
        self._replicas: dict[str, ReplicaState] = {}

    # ---- membership ---------------------------------------------------------------------
    def add(self, replica_id: str) -> None:
        """Start tracking a replica (idempotent); it is eligible after its first good probe."""
        self._replicas.setdefault(replica_id, ReplicaState(replica_id))

    def remove(self, replica_id: str) -> None:
        self._replicas.pop(replica_id, None)

    def ids(self) -> list[str]:
        return sorted(self._replicas)

    def state(self, replica_id: str) -> ReplicaState | None:
        """A copy of one replica's state, or None if it is not in the pool."""
        s = self._replicas.get(replica_id)
        return None if s is None else dataclasses.replace(s)

    def states(self) -> list[ReplicaState]:
        """Copies of every replica's state, sorted by id."""
        return [dataclasses.replace(self._replicas[rid]) for rid in self.ids()]

    def snapshot(self, exclude: Iterable[str] = ()) -> tuple[ReplicaView, ...]:
        """Eligible replicas not in `exclude`, sorted by id: what a policy chooses from."""
        skip = set(exclude)
        return tuple(
            s.view()
            for rid, s in sorted(self._replicas.items())
            if s.is_eligible and rid not in skip
        )

    # ---- requests -------------------------------------------------------------------------
    def acquire(self, replica_id: str) -> None:
        s = self._replicas.get(replica_id)
        if s is not None:
            s.num_in_flight += 1
            s.num_routed += 1

    def release(self, replica_id: str) -> None:
        s = self._replicas.get(replica_id)
        if s is not None:
            s.num_in_flight -= 1
            assert s.num_in_flight >= 0, "release without acquire"

    # ---- health ---------------------------------------------------------------------------
    def record_success(self, replica_id: str) -> None:
        """A proxied request got a response: the failure streak ends (ejection does not)."""
        s = self._replicas.get(replica_id)
        if s is not None and not s.is_ejected:
            s.consecutive_failures = 0

    def record_failure(self, replica_id: str, now_s: float) -> None:
        """A probe or proxied request failed; ejects after `max_failures` in a row.

        Failures of a replica that never came up are not counted: it is simply not admitted.
        A failure while ejected restarts the cool-down.
        """
        s = self._replicas.get(replica_id)
        if s is None or not s.has_probed_ok:
            return
        s.consecutive_failures += 1
        if s.ejected_until_s is not None:
            s.ejected_until_s = max(s.ejected_until_s, now_s + self.config.cooldown_s)
        elif s.consecutive_failures >= self.config.max_failures:
            s.ejected_until_s = now_s + self.config.cooldown_s
            s.num_ejections += 1
            self.on_event("ejected", replica_id)

    def record_hang(self, replica_id: str, now_s: float) -> None:
        """A stream on the replica went past its token deadline: ejected at once (a replica
        whose engine is stuck can still answer some probes until its stall shows)."""
        s = self._replicas.get(replica_id)
        if s is not None:
            s.consecutive_failures = max(s.consecutive_failures, self.config.max_failures - 1)
            self.record_failure(replica_id, now_s)

    def record_probe(self, replica_id: str, result: ProbeResult, now_s: float) -> None:
        """Apply one active probe: admission, re-admission after the cool-down, draining, load."""
        s = self._replicas.get(replica_id)
        if s is None:
            return
        if not result.is_healthy:
            self.record_failure(replica_id, now_s)
            return
        s.has_probed_ok = True
        if result.is_ready is not None:
            s.is_draining = not result.is_ready
        if result.load is not None:
            s.load = result.load
        if s.ejected_until_s is None:
            s.consecutive_failures = 0
        elif now_s >= s.ejected_until_s:
            s.ejected_until_s, s.consecutive_failures = None, 0
            self.on_event("readmitted", replica_id)

    def mark_draining(self, replica_id: str) -> None:
        """The replica refused a request because it is shutting down; a ready probe undoes it."""
        s = self._replicas.get(replica_id)
        if s is not None:
            s.is_draining = True

    def retire(self, replica_id: str) -> None:
        """No new requests for this replica, for good (it is about to be removed)."""
        s = self._replicas.get(replica_id)
        if s is not None:
            s.is_retiring = True
