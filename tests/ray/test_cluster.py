"""Two engine replicas on two Ray nodes behind the Serve ingress (and the gateway), and the
ReplicaManager interface on Serve: list, health, start, stop with draining."""

from __future__ import annotations

import asyncio
import dataclasses
import threading

import httpx
from openai import OpenAI

from tests.gateway.conftest import launch_gateway, make_key
from tests.ray.conftest import MODEL, REPLICA, wait_until
from tests.router.conftest import stream_chat
from tests.server.test_structured_api import WEATHER, one_required_call


def stream_text(client: OpenAI, content: str, max_tokens: int = 12) -> tuple[str, str | None]:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": content}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    text, finish = "", None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    return text, finish


def test_replicas_on_two_nodes_stream_through_ingress_and_gateway(
    two_nodes, fleet_factory, tmp_path
):
    fleet = fleet_factory(num_replicas=2)
    stats = fleet.stats()
    assert len(stats) == 2
    assert len({s["node_id"] for s in stats.values()}) == 2, "replicas share a node"

    client = OpenAI(base_url=f"{fleet.url}/v1", api_key="unused", max_retries=0)
    for i in range(4):  # distinct prompts: no prefix match, so load spreads them
        text, finish = stream_text(client, f"Question {i}: name a colour.")
        assert text and finish == "length"
    served = [s["prefix_cache_queries"] for s in fleet.stats().values()]
    assert all(q > 0 for q in served), f"a replica served nothing: {served}"
    # Grammars travel to the replicas with the request: a tool call comes back whole.
    one_required_call(client, [WEATHER])

    db_url = f"sqlite:///{tmp_path}/gateway.db"
    gateway = launch_gateway(tmp_path, fleet.url, db_url)
    try:
        key = make_key(db_url, "alice")
        via_gateway = OpenAI(base_url=f"{gateway.base_url}/v1", api_key=key, max_retries=0)
        text, finish = stream_text(via_gateway, "Say hello.")
        assert text and finish == "length"
    finally:
        gateway.stop()


def test_manager_lists_checks_and_drains_replicas(two_nodes, fleet_factory):
    fleet = fleet_factory(fresh=False, num_replicas=2)
    manager = fleet.manager
    ids = [r.replica_id for r in manager.list()]
    assert len(ids) == 2
    assert all(asyncio.run(manager.health(i)) for i in ids)
    assert not asyncio.run(manager.health("no-such-replica"))

    # Long streams on both replicas; removing one must let its streams finish (drain).
    results: list[dict] = []
    started: list = []
    threads = [
        threading.Thread(
            target=lambda i=i: results.append(
                stream_chat(fleet.url, 120, started, content=f"Story {i}: a lighthouse.")
            )
        )
        for i in range(4)
    ]
    for t in threads:
        t.start()
    assert wait_until(lambda: len(started) == 4, 60)
    asyncio.run(manager.stop(ids[0], timeout_s=90))
    for t in threads:
        t.join(120)
    assert len(results) == 4
    for r in results:
        assert r["status"] == 200 and r["done"] and not r["error"], r
        assert r["completion_tokens"] == 120
    assert fleet.num_replicas() == 1

    info = asyncio.run(manager.start())
    assert wait_until(lambda: asyncio.run(manager.health(info.replica_id)), 90)
    assert fleet.num_replicas() == 2


def test_an_ingress_with_a_key_demands_it_on_v1_and_metrics(fleet_factory):
    key = "ray-ingress-test-key"
    server = dataclasses.replace(REPLICA.server, api_key=key)
    fleet = fleet_factory(
        fresh=False, num_replicas=1, replica=dataclasses.replace(REPLICA, server=server)
    )
    assert key not in repr(fleet.config)  # configs are logged and hashed: never the key
    assert httpx.get(f"{fleet.url}/health", timeout=30).status_code == 200
    for path in ("/v1/models", "/metrics"):
        assert httpx.get(fleet.url + path, timeout=30).status_code == 401
        wrong = {"authorization": "Bearer nope"}
        assert httpx.get(fleet.url + path, headers=wrong, timeout=30).status_code == 401
        bearer = {"authorization": f"Bearer {key}"}
        assert httpx.get(fleet.url + path, headers=bearer, timeout=30).status_code == 200
