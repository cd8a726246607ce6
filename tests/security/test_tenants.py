"""No leaks between tenants, and no tenant filling the store."""

from __future__ import annotations

import httpx

from chatfleet.config.engine_config import CacheConfig
from chatfleet.engine.kv_cache_manager import KVCacheManager
from chatfleet.engine.request import Request
from chatfleet.sampling_params import SamplingParams
from tests.gateway.conftest import auth, make_key, say
from tests.gateway.services import create_database

MODEL = "SmolLM2-135M-Instruct"
# A prompt of several KV blocks that only its author could know.
SECRET = "My account number is 4417-1234-5678-9113 and my password is " + "hunter2 " * 60


def _cached_tokens(base_url: str, key: str) -> int:
    body = {"model": MODEL, "messages": [{"role": "user", "content": SECRET}], "max_tokens": 1}
    r = httpx.post(f"{base_url}/v1/chat/completions", json=body, headers=auth(key), timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["usage"]["prompt_tokens_details"]["cached_tokens"]


def test_one_tenants_prompt_is_never_a_cache_hit_for_another(gateway_factory, sqlite_url):
    alice, mallory = make_key(sqlite_url, "alice"), make_key(sqlite_url, "mallory")
    gw = gateway_factory(sqlite_url)
    _cached_tokens(gw.base_url, alice)
    assert _cached_tokens(gw.base_url, mallory) == 0  # probing alice's prompt learns nothing
    assert _cached_tokens(gw.base_url, alice) > 100  # alice still hits her own cache
    # A salt a client sends is replaced by the gateway's: mallory cannot borrow alice's.
    body = {"model": MODEL, "messages": [{"role": "user", "content": SECRET}], "max_tokens": 1}
    body["cache_salt"] = "anything"
    url = f"{gw.base_url}/v1/chat/completions"
    r = httpx.post(url, json=body, headers=auth(mallory), timeout=60)
    assert r.json()["usage"]["prompt_tokens_details"]["cached_tokens"] > 100  # mallory's own


def test_an_operator_can_share_the_cache_between_tenants(gateway_factory, sqlite_url):
    alice, bob = make_key(sqlite_url, "alice2"), make_key(sqlite_url, "bob2")
    gw = gateway_factory(sqlite_url, "--cache-isolation", "shared")
    _cached_tokens(gw.base_url, alice)
    assert _cached_tokens(gw.base_url, bob) > 100


def test_blocks_are_shared_only_within_a_salt():
    manager = KVCacheManager(64, 16, enable_caching=True)
    tokens = list(range(100, 180))

    def admit(request_id: str, salt: str | None) -> int:
        request = Request(request_id, tokens, SamplingParams(cache_salt=salt))
        hits, num_hit = manager.get_computed_blocks(request)
        assert manager.allocate_slots(request, len(tokens) - num_hit, hits, num_hit) is not None
        request.num_computed_tokens = len(tokens)
        manager.free(request)
        return num_hit

    assert admit("a1", "alice") == 0
    assert admit("m1", "mallory") == 0
    assert admit("n1", None) == 0
    assert admit("a2", "alice") == 64 and admit("n2", None) == 64  # all but the last block
    manager.check_integrity()
    assert CacheConfig().enable_prefix_caching  # the default the gateway's salts rely on


def test_conversations_are_created_at_the_keys_rate(gateway_factory, sqlite_url):
    key = make_key(sqlite_url, "carol", rpm=3)
    gw = gateway_factory(sqlite_url)
    codes = [
        httpx.post(
            f"{gw.base_url}/api/conversations", json={}, headers=auth(key), timeout=10
        ).status_code
        for _ in range(4)
    ]
    assert codes == [201, 201, 201, 429]


def test_a_users_stored_text_has_a_ceiling(gateway_factory, sqlite_url):
    key = make_key(sqlite_url, "dave")
    gw = gateway_factory(sqlite_url, "--max-stored-bytes-per-user", "2000B")
    url = f"{gw.base_url}/api/conversations"
    r = httpx.post(url, json={"system_prompt": "x" * 1500}, headers=auth(key), timeout=10)
    assert r.status_code == 201
    conv = r.json()["id"]
    big = httpx.post(url, json={"system_prompt": "y" * 1000}, headers=auth(key), timeout=10)
    assert big.status_code == 413 and big.json()["error"]["code"] == "storage_quota_exceeded"
    message = {"content": "z" * 600, "max_tokens": 1}
    r = httpx.post(f"{url}/{conv}/messages", json=message, headers=auth(key), timeout=30)
    assert r.status_code == 413


def test_nul_in_stored_text_or_an_id_is_never_a_500(gateway_factory, postgres):
    """PostgreSQL's text cannot hold NUL; every route that stores or looks up text takes it."""
    db_url = create_database(postgres.url)
    key = make_key(db_url, "alice")
    gw = gateway_factory(db_url)
    r = httpx.post(
        f"{gw.base_url}/api/conversations",
        json={"title": "a\x00b", "system_prompt": "x\x00"},
        headers=auth(key),
        timeout=10,
    )
    assert r.status_code == 201, r.text
    conv = r.json()["id"]
    assert say(gw.base_url, key, conv, "hi\x00there").status == 200
    r = httpx.patch(
        f"{gw.base_url}/api/conversations/{conv}", json={"title": "t\x00"}, headers=auth(key)
    )
    assert r.status_code == 200, r.text
    for method, path in (("GET", "/api/conversations/%00"), ("DELETE", "/api/keys/%00")):
        r = httpx.request(method, gw.base_url + path, headers=auth(key), timeout=10)
        assert r.status_code == 404, (path, r.text)
