"""Active health probing: every interval, each replica's /health, /ready and /metrics."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx

from chatfleet.config.router_config import HealthConfig
from chatfleet.router.pool import ProbeResult, ReplicaLoad, ReplicaPool

logger = logging.getLogger("chatfleet.router")

# vLLM metric names, as `chatfleet serve` exports them (counters carry Prometheus' _total).
_SCRAPED = {
    "vllm:num_requests_waiting": "num_waiting",
    "vllm:num_requests_running": "num_running",
    "vllm:kv_cache_usage_perc": "kv_cache_usage",
    "vllm:prefix_cache_queries_total": "prefix_cache_queries",
    "vllm:prefix_cache_hits_total": "prefix_cache_hits",
}


def parse_metric_sums(text: str) -> dict[str, float]:
    """Prometheus text format -> metric name -> sum of its samples (labels summed over)."""
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        try:
            value = float(line.rsplit(" ", 1)[1])
        except (IndexError, ValueError):
            continue
        sums[name] = sums.get(name, 0.0) + value
    return sums


def parse_replica_load(text: str) -> ReplicaLoad:
    """The load values the router needs from a replica's /metrics (absent ones are 0)."""
    sums = parse_metric_sums(text)
    values = {field: sums.get(name, 0.0) for name, field in _SCRAPED.items()}
    return ReplicaLoad(
        num_waiting=int(values["num_waiting"]),
        num_running=int(values["num_running"]),
        kv_cache_usage=values["kv_cache_usage"],
        prefix_cache_queries=int(values["prefix_cache_queries"]),
        prefix_cache_hits=int(values["prefix_cache_hits"]),
    )


class HealthChecker:
    """Probes the pool's replicas and records the results in the pool."""

    def __init__(self, pool: ReplicaPool, config: HealthConfig, client: httpx.AsyncClient) -> None:
        self.pool = pool
        self.config = config
        self.client = client

    async def probe(self, replica_id: str) -> ProbeResult:
        """/health decides health; /ready (draining) and /metrics (load) are best effort."""
        timeout = self.config.probe_timeout_s
        try:
            health = await self.client.get(f"{replica_id}/health", timeout=timeout)
        except httpx.HTTPError:
            return ProbeResult(is_healthy=False)
        if health.status_code != 200:
            return ProbeResult(is_healthy=False)
        is_ready, load = None, None
        try:
            ready = await self.client.get(f"{replica_id}/ready", timeout=timeout)
            is_ready = ready.status_code == 200
            metrics = await self.client.get(f"{replica_id}/metrics", timeout=timeout)
            if metrics.status_code == 200:
                load = parse_replica_load(metrics.text)
        except httpx.HTTPError:
            pass
        return ProbeResult(True, is_ready, load)

    async def probe_all(self) -> None:
        """One round over every replica, concurrently."""
        ids = self.pool.ids()
        results = await asyncio.gather(*(self.probe(rid) for rid in ids))
        now = time.monotonic()
        for rid, result in zip(ids, results, strict=True):
            self.pool.record_probe(rid, result, now)

    async def run(self) -> None:
        """Probe forever (until cancelled), one round per `probe_interval_s`."""
        while True:
            started = time.monotonic()
            try:
                await self.probe_all()
            except Exception:  # a bug here must not stop health checking
                logger.exception("health probe round failed")
            elapsed = time.monotonic() - started
            await asyncio.sleep(max(0.0, self.config.probe_interval_s - elapsed))
