"""The router's own Prometheus metrics: decisions, retries, ejections, per-replica state.

Per-replica gauges are read from the pool at scrape time; the autoscaler reads the same pool.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from chatfleet.router.pool import ReplicaPool, ReplicaState

_PREFIX = "chatfleet_router_"
_REPLICA_GAUGES: list[tuple[str, str, Callable[[ReplicaState], float]]] = [
    (
        "replica_in_flight",
        "Requests this router has open on the replica.",
        lambda s: s.num_in_flight,
    ),
    ("replica_eligible", "1 if the replica gets new requests.", lambda s: s.is_eligible),
    ("replica_draining", "1 if the replica reported it is shutting down.", lambda s: s.is_draining),
    ("replica_ejected", "1 while the replica is ejected after failures.", lambda s: s.is_ejected),
    ("replica_num_waiting", "The replica's queue (scraped).", lambda s: s.load.num_waiting),
    (
        "replica_num_running",
        "The replica's running requests (scraped).",
        lambda s: s.load.num_running,
    ),
    (
        "replica_kv_cache_usage",
        "The replica's KV usage 0-1 (scraped).",
        lambda s: s.load.kv_cache_usage,
    ),
    (
        "replica_prefix_cache_queries",
        "Prompt tokens the replica looked up in its prefix cache (scraped).",
        lambda s: s.load.prefix_cache_queries,
    ),
    (
        "replica_prefix_cache_hits",
        "Prompt tokens the replica found in its prefix cache (scraped).",
        lambda s: s.load.prefix_cache_hits,
    ),
]


class _PoolCollector:
    def __init__(self, pool: ReplicaPool) -> None:
        self.pool = pool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        states = self.pool.states()
        yield GaugeMetricFamily(_PREFIX + "num_replicas", "Replicas known.", value=len(states))
        yield GaugeMetricFamily(
            _PREFIX + "num_eligible_replicas",
            "Replicas that get new requests.",
            value=sum(s.is_eligible for s in states),
        )
        for name, doc, value in _REPLICA_GAUGES:
            g = GaugeMetricFamily(_PREFIX + name, doc, labels=["replica"])
            for s in states:
                g.add_metric([s.replica_id], float(value(s)))
            yield g


class RouterMetrics:
    def __init__(self, pool: ReplicaPool) -> None:
        self.registry = reg = CollectorRegistry()
        reg.register(_PoolCollector(pool))

        def counter(name: str, doc: str, labels: list[str]) -> Counter:
            return Counter(_PREFIX + name, doc, labels, registry=reg)

        self.requests = counter("requests", "Requests answered, by HTTP status.", ["status"])
        self.decisions = counter(
            "routing_decisions", "Routing decisions by policy and reason.", ["policy", "reason"]
        )
        self.routed = counter("routed", "Attempts sent to each replica.", ["replica"])
        self.retries = counter(
            "retries", "Attempts after the first, by what went wrong before.", ["reason"]
        )
        self.ejections = counter("ejections", "Replicas ejected after failures.", ["replica"])
        self.readmissions = counter("readmissions", "Ejected replicas re-admitted.", ["replica"])
        self.stream_errors = counter(
            "stream_errors",
            "Responses cut by the replica after streaming began (ended with an error event).",
            ["replica"],
        )
        self.resumptions = counter(
            "stream_resumptions",
            "Streams moved to another replica mid-way, by outcome (attempted, succeeded, failed).",
            ["outcome"],
        )
        self.resume_seconds = Histogram(
            _PREFIX + "resume_seconds",
            "From a replica's failure mid-stream to the first token of the replica resuming it.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
            registry=reg,
        )
        self.prefix_query_blocks = Counter(
            _PREFIX + "prefix_query_blocks",
            "Prompt blocks looked up in the router's prefix index.",
            registry=reg,
        )
        self.prefix_hit_blocks = Counter(
            _PREFIX + "prefix_hit_blocks",
            "Prompt blocks the chosen replica likely had cached (the router's estimate).",
            registry=reg,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
