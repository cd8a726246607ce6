"""The simulated router: the real policy, prefix index and replica pool, on simulated time.

Each request goes through the router's own decision path: `route_request` (prompt blocks ->
prefix matches) -> `policy.choose(request, pool.snapshot())` -> `index.insert`; a replica
that refuses (its server's admission bound) sends the request to the next choice, at most
`max_attempts` replicas, like `Router.forward`. Replica load reaches the pool only through
probes every `probe_interval_s`, as scraped /metrics do; in-flight counts are live.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from chatfleet.config.router_config import RouterConfig
from chatfleet.router.policies import make_policy
from chatfleet.router.pool import ProbeResult, ReplicaLoad, ReplicaPool
from chatfleet.router.prefix_index import PrefixIndex, route_request

# The router indexes prompt *text* in blocks of PrefixConfig.block_chars characters; simulated
# prompts are token ids, written as 4 hex digits each (about the characters per token of
# English text), so 64-character blocks are 16-token blocks, like the engine's.


def tokens_text(token_ids: list[int]) -> str:
    return "".join(f"{t & 0xFFFF:04x}" for t in token_ids)


class SimRouter:
    def __init__(self, config: RouterConfig, replica_ids: list[str]) -> None:
        self.config = config
        self.policy = make_policy(config.policy)
        self.pool = ReplicaPool(config.health)
        self.index = PrefixIndex(config.prefix.max_blocks_per_replica)
        self._seq = itertools.count()
        self.num_query_blocks = 0  # the router's own estimate of prefix hits, as its metrics
        self.num_hit_blocks = 0
        for rid in replica_ids:
            self.pool.add(rid)

    def probe(self, loads: dict[str, ReplicaLoad], now_s: float) -> None:
        for rid, load in loads.items():
            self.pool.record_probe(rid, ProbeResult(True, True, load), now_s)

    def route(
        self, token_ids: list[int], session_key: str, can_admit: Callable[[str], bool]
    ) -> str | None:
        """The replica that took the request (in-flight count taken), or None if none did."""
        payload = {"prompt": tokens_text(token_ids)}
        seq = next(self._seq)
        request, hashes = route_request(payload, seq, self.index, self.config.prefix, session_key)
        tried: list[str] = []
        for _ in range(self.config.proxy.max_attempts):
            replicas = self.pool.snapshot(exclude=tried)
            if not replicas:
                break
            rid = self.policy.choose(request, replicas).replica_id
            if not tried:
                self.num_query_blocks += request.num_prefix_blocks
                self.num_hit_blocks += request.matched_blocks.get(rid, 0)
            tried.append(rid)
            self.index.insert(hashes, rid)
            if can_admit(rid):
                self.pool.acquire(rid)
                return rid
        return None

    def release(self, replica_id: str) -> None:
        self.pool.release(replica_id)
