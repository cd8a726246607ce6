"""Router-test helpers: three real replicas for the package, routers started per test."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import httpx
import pytest

from chatfleet.router.health import parse_metric_sums
from tests.server.conftest import metric
from tests.server_process import (
    ServerProcess,
    free_port,
    launch,
    launch_server,
    wait_ready,
    wait_until,
)

# One thread each: three replicas and the router share a small machine.
REPLICA_ARGS = ("--num-threads", "1", "--max-num-seqs", "16")
# Fast health reactions, so tests wait seconds, not minutes.
FAST_HEALTH = ("--probe-interval", "0.2", "--max-failures", "2", "--eject-cooldown", "1")
MODEL = "SmolLM2-135M-Instruct"
REPLICA_HEADER = "x-chatfleet-replica"


def replica_states(router: ServerProcess) -> dict[str, dict]:
    body = httpx.get(f"{router.base_url}/router/replicas", timeout=10).json()
    return {r["url"]: r for r in body["replicas"]}


def stream_chat(
    url: str,
    max_tokens: int,
    started: list | None = None,
    content: str = "Tell me about lighthouses.",
) -> dict:
    """One streamed chat completion. Returns its status, the replica that served it, whether
    it ended with [DONE], whether an SSE error event came, its completion_tokens (from usage),
    and whether any event arrived (`streamed`). Appends the replica to `started` (if given)
    once the first event arrived. Connection failures are results, not exceptions."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    result: dict = {"status": None, "replica": None, "events": []}
    try:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as r:
            result.update(status=r.status_code, replica=r.headers.get(REPLICA_HEADER))
            for line in r.iter_lines():
                if line.startswith("data: "):
                    result["events"].append(line[6:])
                    if started is not None and len(result["events"]) == 1:
                        started.append(result["replica"])
    except httpx.HTTPError as e:
        result["exception"] = repr(e)
    events = result["events"]
    objects = [json.loads(e) for e in events if e != "[DONE]"]
    usage = [o["usage"] for o in objects if o.get("usage")]
    result.update(
        streamed=bool(events),
        done=bool(events) and events[-1] == "[DONE]",
        error=any("error" in o for o in objects),
        completion_tokens=usage[-1]["completion_tokens"] if usage else None,
    )
    return result


def launch_servers(tmp_path, num: int, *args: str) -> list[ServerProcess]:
    """Start `num` replicas at once (their model loads overlap) and wait for all."""
    servers = [launch_server(tmp_path, *REPLICA_ARGS, *args) for _ in range(num)]
    try:
        return [wait_ready(s) for s in servers]
    except BaseException:
        for s in servers:
            s.stop()
        raise


def launch_router(tmp_path, urls: list[str], *args: str) -> ServerProcess:
    """`chatfleet router` over replica `urls`, returned once its own /health answers."""
    port = free_port()
    replica_args = [a for url in urls for a in ("--replica", url)]
    router = launch(tmp_path, "router", port, "router", "--port", str(port), *replica_args, *args)
    return wait_ready(router, "/health")


def start_router(tmp_path, replicas: list[ServerProcess], *args: str) -> ServerProcess:
    """`chatfleet router` over `replicas`, returned once every one of them is eligible."""
    router = launch_router(tmp_path, [r.base_url for r in replicas], *args)
    if not wait_until(lambda: all(s["eligible"] for s in replica_states(router).values())):
        router.stop()
        raise RuntimeError(f"replicas not all eligible: {replica_states(router)}")
    return router


def router_metric(router: ServerProcess, name: str) -> float:
    """Sum of a router metric's samples; 0 when it has none yet (a labelled counter)."""
    text = httpx.get(f"{router.base_url}/metrics", timeout=10).text
    sums = parse_metric_sums(text)
    return sums.get(name, 0.0)


def prefix_cache_counts(replicas: list[ServerProcess]) -> tuple[float, float]:
    """(hits, queries) in prompt tokens, summed over the replicas' own counters."""
    hits = sum(metric(r.base_url, "vllm:prefix_cache_hits_total") for r in replicas)
    queries = sum(metric(r.base_url, "vllm:prefix_cache_queries_total") for r in replicas)
    return hits, queries


@pytest.fixture(scope="package")
def replicas(tmp_path_factory) -> Iterator[list[ServerProcess]]:
    servers = launch_servers(tmp_path_factory.mktemp("replicas"), 3)
    yield servers
    for s in servers:
        s.stop()


@pytest.fixture
def router_factory(tmp_path) -> Iterator[Callable[..., ServerProcess]]:
    """start_router, with every router stopped at the end of the test."""
    started: list[ServerProcess] = []

    def make(replicas: list[ServerProcess], *args: str) -> ServerProcess:
        router = start_router(tmp_path, replicas, *FAST_HEALTH, *args)
        started.append(router)
        return router

    yield make
    for router in started:
        router.stop()
