"""Prometheus metrics under vLLM's names and meanings, so vLLM dashboards work unchanged.

Engine-owned values (queue sizes, KV usage, preemptions, prefix-cache counters) are read from one
EngineStats snapshot at scrape time; per-request latencies are observed by the server.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from chatfleet.engine.engine_client import EngineStats

_LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)


class _EngineCollector:
    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.stats: EngineStats | None = None

    def collect(self):
        s, labels = self.stats, ["model_name"]
        if s is None:
            return
        values = [self.model_name]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=labels)
            g.add_metric(values, value)
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=labels)
            c.add_metric(values, value)
            return c

        yield gauge("vllm:num_requests_running", "Requests in the running batch.", s.num_running)
        yield gauge("vllm:num_requests_waiting", "Requests waiting to be scheduled.", s.num_waiting)
        yield gauge(
            "vllm:kv_cache_usage_perc", "Fraction of KV blocks in use (0-1).", s.kv_cache_usage
        )
        yield counter("vllm:num_preemptions", "Preemptions (by recompute).", s.num_preemptions)
        yield counter(
            "vllm:prefix_cache_queries",
            "Prompt tokens looked up in the prefix cache.",
            s.prefix_cache_queries,
        )
        yield counter(
            "vllm:prefix_cache_hits",
            "Prompt tokens found in the prefix cache.",
            s.prefix_cache_hits,
        )


class ServerMetrics:
    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry()
        self._engine = _EngineCollector(model_name)
        self.registry.register(self._engine)
        labels, reg = ["model_name"], self.registry
        self.model_name = model_name

        def hist(name: str, doc: str) -> Histogram:
            return Histogram(name, doc, labels, registry=reg, buckets=_LATENCY_BUCKETS)

        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Prompt tokens processed.", labels, registry=reg
        ).labels(model_name)
        self.generation_tokens = Counter(
            "vllm:generation_tokens", "Tokens generated.", labels, registry=reg
        ).labels(model_name)
        self.request_success = Counter(
            "vllm:request_success", "Requests finished.", labels + ["finished_reason"], registry=reg
        )
        self.ttft = hist("vllm:time_to_first_token_seconds", "Time to first token.").labels(
            model_name
        )
        self.itl = hist("vllm:inter_token_latency_seconds", "Time between tokens.").labels(
            model_name
        )
        self.e2e = hist("vllm:e2e_request_latency_seconds", "Request latency.").labels(model_name)
        self.queue_time = hist(
            "vllm:request_queue_time_seconds", "Time waiting before first scheduled."
        ).labels(model_name)

    def render(self, stats: EngineStats) -> bytes:
        self._engine.stats = stats
        return generate_latest(self.registry)
