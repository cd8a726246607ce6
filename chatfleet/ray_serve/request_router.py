"""ChatfleetRequestRouter: Ray Serve's request-router hook, deciding with chatfleet's policies.

Serve runs one instance inside every DeploymentHandle (here: in the ingress) and calls
`choose_replicas` for each request. The decision is `make_policy(...).choose()`, the very
policy object `chatfleet router` uses, over ReplicaViews built from:
  - this router's own in-flight count per replica (on_request_routed / _completed),
  - the replica's routing stats (EngineReplica.record_routing_stats: queue, KV usage),
  - the prefix index (router.prefix_index), fed on every dispatch, as in router/forwarder.py.
The policy's choice is the first rank; the others follow as a fallback rank, which Serve
uses only if the chosen replica refuses (its max_ongoing_requests is reached).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from typing import Any

from ray.serve.request_router import (
    PendingRequest,
    ReplicaID,
    ReplicaResult,
    RequestRouter,
    RunningReplica,
)

from chatfleet.config.router_config import PolicyConfig, PrefixConfig
from chatfleet.ray_serve.calls import GenerateCall
from chatfleet.router.policies import make_policy
from chatfleet.router.prefix_index import PrefixIndex, block_hashes, prompt_text, route_request
from chatfleet.router.snapshot import ReplicaView


def replica_key(replica_id: ReplicaID) -> str:
    """The id policies see: Serve's short unique id of the replica (stable while it lives)."""
    return str(replica_id.unique_id)


def replica_view(replica: RunningReplica, num_in_flight: int) -> ReplicaView:
    stats = replica.routing_stats or {}
    return ReplicaView(
        replica_key(replica.replica_id),
        num_in_flight=num_in_flight,
        num_waiting=int(stats.get("num_waiting", 0)),
        num_running=int(stats.get("num_running", 0)),
        kv_cache_usage=float(stats.get("kv_cache_usage", 0.0)),
    )


def _call(pending: PendingRequest | None) -> GenerateCall | None:
    if pending is None:
        return None
    return next((a for a in pending.args if isinstance(a, GenerateCall)), None)


class ChatfleetRequestRouter(RequestRouter):
    """Kwargs (RequestRouterConfig.request_router_kwargs, JSON): `policy` and `prefix`, the
    fields of PolicyConfig and PrefixConfig; `unavailable_cooldown_s`."""

    def initialize_state(self, **kwargs: Any) -> None:
        self.policy = make_policy(PolicyConfig(**kwargs.get("policy", {})))
        self.prefix_config = PrefixConfig(**kwargs.get("prefix", {}))
        self.index = PrefixIndex(self.prefix_config.max_blocks_per_replica)
        self.unavailable_cooldown_s = float(kwargs.get("unavailable_cooldown_s", 5.0))
        self._seq = itertools.count()
        self._in_flight: dict[str, set[str]] = {}  # replica key -> internal request ids
        self._unavailable_until: dict[str, float] = {}  # replica key -> monotonic time

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        if pending_request is not None:
            # NOTE: without this Serve retries a refused choice at once, in a busy loop.
            pending_request.routing_context.should_backoff = True
        replicas = self._eligible(candidate_replicas)
        call = _call(pending_request)
        payload, session = (call.route.payload, call.route.session_key) if call else (None, None)
        request, _ = route_request(
            payload, next(self._seq), self.index, self.prefix_config, session
        )
        views = sorted(
            (replica_view(r, self._num_in_flight(r.replica_id)) for r in replicas),
            key=lambda v: v.replica_id,
        )
        chosen = self.policy.choose(request, views).replica_id
        first = [r for r in replicas if replica_key(r.replica_id) == chosen]
        rest = [r for r in replicas if replica_key(r.replica_id) != chosen]
        return [first, rest] if rest else [first]

    def _num_in_flight(self, replica_id: ReplicaID) -> int:
        return len(self._in_flight.get(replica_key(replica_id), ()))

    def _eligible(self, replicas: Sequence[RunningReplica]) -> list[RunningReplica]:
        """Replicas not recently unreachable; all of them if none is left."""
        now = time.monotonic()
        ok = [
            r
            for r in replicas
            if self._unavailable_until.get(replica_key(r.replica_id), 0.0) <= now
        ]
        return ok or list(replicas)

    def on_request_routed(
        self, pending_request: PendingRequest, replica_id: ReplicaID, result: ReplicaResult
    ) -> None:
        key = replica_key(replica_id)
        self._in_flight.setdefault(key, set()).add(pending_request.metadata.internal_request_id)
        call = _call(pending_request)
        if call is not None:
            hashes = block_hashes(prompt_text(call.route.payload), self.prefix_config)
            self.index.insert(hashes, key)

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        self._in_flight.get(replica_key(replica_id), set()).discard(internal_request_id)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._forget(replica_key(replica_id))

    def on_replica_actor_unavailable(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_unavailable(replica_id)
        key = replica_key(replica_id)
        self._unavailable_until[key] = time.monotonic() + self.unavailable_cooldown_s

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        before = {replica_key(rid) for rid in self._replicas}
        super().update_replicas(replicas)
        for key in before - {replica_key(rid) for rid in self._replicas}:
            self._forget(key)

    def _forget(self, key: str) -> None:
        """The replica is gone: its KV cache with it."""
        self.index.forget_replica(key)
        self._in_flight.pop(key, None)
        self._unavailable_until.pop(key, None)
