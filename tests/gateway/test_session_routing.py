"""The conversation id reaches the router as its session: with the `session` policy every
turn of a conversation goes to the same replica. Two replica URLs that name the one real
server (127.0.0.1 and localhost) stand in for two replicas."""

from __future__ import annotations

import httpx
import pytest

from tests.gateway.conftest import make_key, new_conversation, say
from tests.server_process import free_port, launch, wait_ready

pytestmark = pytest.mark.e2e  # starts its own servers


def _routed(router_url: str) -> dict[str, int]:
    body = httpx.get(f"{router_url}/router/replicas", timeout=10).json()
    return {r["url"]: r["num_routed"] for r in body["replicas"]}


def test_turns_of_a_conversation_stay_on_one_replica(tmp_path, server, gateway_factory, sqlite_url):
    port = server.base_url.rsplit(":", 1)[1]
    replicas = [f"http://127.0.0.1:{port}", f"http://localhost:{port}"]
    router_port = free_port()
    args = ["router", "--port", str(router_port), "--policy", "session"]
    for url in replicas:
        args += ["--replica", url]
    router = wait_ready(launch(tmp_path, "router", router_port, *args), "/ready")
    try:
        key = make_key(sqlite_url, "alice")
        gw = gateway_factory(sqlite_url, upstream=router.base_url)
        # The gateway's first message also asks /v1/models (once, with no session): let that
        # happen before counting, so each counted turn is one routed request.
        say(gw.base_url, key, new_conversation(gw.base_url, key), "Hello.", max_tokens=1)
        placements: dict[str, set[str]] = {}
        for i in range(12):
            conv = new_conversation(gw.base_url, key)
            for turn in range(2):
                before = _routed(router.base_url)
                r = say(gw.base_url, key, conv, f"Turn {turn} of chat {i}.", max_tokens=1)
                assert r.status == 200 and r.end["message"]["status"] == "complete"
                after = _routed(router.base_url)
                moved = [url for url in replicas if after[url] > before[url]]
                assert len(moved) == 1
                placements.setdefault(conv, set()).add(moved[0])
        assert all(len(urls) == 1 for urls in placements.values()), placements
        # Different conversations spread over both (12 sessions on a hash ring: all on one
        # replica would happen 1 time in 2000).
        assert len(set().union(*placements.values())) == 2
    finally:
        router.stop()
