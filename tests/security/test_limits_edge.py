"""Limits that hold when their store fails: a 503 the client can retry, nothing charged."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from chatfleet.config.gateway_config import LimitsConfig
from chatfleet.gateway.limiter import Limiter, LimitsUnavailableError
from chatfleet.gateway.limits.memory import MemoryRateLimitStore
from chatfleet.gateway.store import open_store
from chatfleet.gateway.store.base import ApiKey
from tests.gateway.conftest import auth, make_key
from tests.server_process import free_port

CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}


def _conversation_of(db_url: str, user: str) -> str:
    """A conversation written straight into the store: the gateway cannot make one now."""
    store = open_store(db_url)
    try:
        owner = store.get_user_by_name(user)
        assert owner is not None
        return store.create_conversation(owner.user_id).conversation_id
    finally:
        store.close()


def test_an_unreachable_limit_store_is_a_503_with_retry_after(gateway_factory, sqlite_url):
    key = make_key(sqlite_url, "alice")
    gw = gateway_factory(sqlite_url, "--limits", f"redis://127.0.0.1:{free_port()}/0")
    for body in (CHAT, {**CHAT, "stream": True}):
        r = httpx.post(
            f"{gw.base_url}/v1/chat/completions", json=body, headers=auth(key), timeout=30
        )
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "limits_unavailable"
        assert int(r.headers["retry-after"]) >= 1
    # Creating a conversation takes a request of the key's rate, so it is refused the same.
    r = httpx.post(f"{gw.base_url}/api/conversations", json={}, headers=auth(key), timeout=30)
    assert r.status_code == 503 and r.json()["error"]["code"] == "limits_unavailable"
    conv = _conversation_of(sqlite_url, "alice")
    r = httpx.post(
        f"{gw.base_url}/api/conversations/{conv}/messages",
        json={"content": "Hi", "max_tokens": 4},
        headers=auth(key),
        timeout=30,
    )
    assert r.status_code == 503 and r.json()["error"]["code"] == "limits_unavailable"


class _StreamSlotsDown(MemoryRateLimitStore):
    """The real in-memory buckets, with the stream-slot call failing as a lost Redis does."""

    async def acquire_stream(self, key_id, stream_id, max_streams, lease_s):  # type: ignore[override]
        raise ConnectionError("Connection refused")


def test_a_failed_stream_slot_gives_the_token_reservation_back():
    async def main() -> None:
        store = _StreamSlotsDown()
        limiter = Limiter(store, LimitsConfig())
        key = ApiKey("k1", "u1", "alice", False, "", "", "", 100, 1000, 4, 0.0, None)
        with pytest.raises(LimitsUnavailableError):
            await limiter.admit(key, 900, is_stream=True)
        # The 900 tokens came back: a request of 900 more fits the 1000-token minute.
        admitted = await limiter.admit(key, 900, is_stream=False)
        await admitted.release()

    asyncio.run(main())
