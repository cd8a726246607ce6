"""Keys and ownership against a real gateway: 401 without a good key, 404 for another
user's conversation (which stays intact), admin-only routes, and `chatfleet keys`."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import httpx
import pytest

from tests.gateway.conftest import auth, get_conversation, make_key, new_conversation, say

pytestmark = pytest.mark.e2e  # starts its own servers

ROUTES = [
    ("GET", "/api/conversations"),
    ("POST", "/api/conversations"),
    ("GET", "/api/usage"),
    ("GET", "/api/me"),
    ("GET", "/v1/models"),
    ("POST", "/v1/chat/completions"),
]


def _assert_401(r: httpx.Response) -> None:
    assert r.status_code == 401, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "invalid_api_key"


def test_missing_wrong_and_revoked_keys_get_401(gateway_factory, sqlite_url):
    key = make_key(sqlite_url, "alice")
    gw = gateway_factory(sqlite_url)
    wrong_secret = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    for method, path in ROUTES:
        url = gw.base_url + path
        _assert_401(httpx.request(method, url, json=body, timeout=10))
        for bad in ["nonsense", "cf_0123456789abcdef_secret", wrong_secret]:
            _assert_401(httpx.request(method, url, json=body, headers=auth(bad), timeout=10))
        _assert_401(httpx.request(method, url, json=body, headers={"Authorization": key}))
    me = httpx.get(f"{gw.base_url}/api/me", headers=auth(key), timeout=10)
    assert me.status_code == 200 and me.json()["user"] == "alice"
    key_id = me.json()["key_id"]
    r = httpx.delete(f"{gw.base_url}/api/keys/{key_id}", headers=auth(key), timeout=10)
    assert r.status_code == 200
    for method, path in ROUTES:
        _assert_401(httpx.request(method, gw.base_url + path, json=body, headers=auth(key)))


def test_users_cannot_touch_each_others_conversations(gateway_factory, sqlite_url):
    alice, bob = make_key(sqlite_url, "alice"), make_key(sqlite_url, "bob")
    gw = gateway_factory(sqlite_url)
    conv = new_conversation(gw.base_url, bob)
    assert say(gw.base_url, bob, conv, "Hello!", max_tokens=4).status == 200
    before = get_conversation(gw.base_url, bob, conv).json()
    assert len(before["messages"]) == 2

    assert get_conversation(gw.base_url, alice, conv).status_code == 404
    r = say(gw.base_url, alice, conv, "I am not bob")
    assert r.status == 404 and r.body["error"]["code"] == "not_found"
    url = f"{gw.base_url}/api/conversations/{conv}"
    assert httpx.delete(url, headers=auth(alice), timeout=10).status_code == 404
    assert httpx.patch(url, json={"title": "x"}, headers=auth(alice), timeout=10).status_code == 404
    r = httpx.post(f"{url}/regenerate", headers=auth(alice), timeout=10)
    assert r.status_code == 404
    listed = httpx.get(f"{gw.base_url}/api/conversations", headers=auth(alice), timeout=10)
    assert listed.json()["data"] == []

    after = get_conversation(gw.base_url, bob, conv).json()
    assert after == before  # untouched


def test_admin_routes_and_keys_cli(gateway_factory, sqlite_url, tmp_path):
    user_key = make_key(sqlite_url, "carol")
    admin = make_key(sqlite_url, "root", admin=True)
    gw = gateway_factory(sqlite_url)
    body = {"user": "dave", "rpm": 7}
    r = httpx.post(f"{gw.base_url}/api/keys", json=body, headers=auth(user_key), timeout=10)
    assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"
    r = httpx.get(f"{gw.base_url}/api/usage?all=true", headers=auth(user_key), timeout=10)
    assert r.status_code == 403
    r = httpx.post(f"{gw.base_url}/api/keys", json=body, headers=auth(admin), timeout=10)
    assert r.status_code == 201 and r.json()["rpm"] == 7
    dave = r.json()["key"]
    me = httpx.get(f"{gw.base_url}/api/me", headers=auth(dave), timeout=10).json()
    assert me["user"] == "dave" and me["limits"]["rpm"] == 7

    def cli(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "chatfleet.entrypoints.cli", "keys", *args]
        return subprocess.run(cmd + ["--db", sqlite_url], capture_output=True, text=True)

    made = cli("create", "--user", "erin", "--rpm", "5", "--tpm", "1000")
    assert made.returncode == 0, made.stderr
    plain = made.stdout.strip()
    key_id = plain.split("_")[1]
    me = httpx.get(f"{gw.base_url}/api/me", headers=auth(plain), timeout=10).json()
    assert me["user"] == "erin" and me["limits"]["tpm"] == 1000
    listed = cli("list", "--user", "erin")
    assert key_id in listed.stdout and plain not in listed.stdout
    # Only a salted hash is stored: the secret appears nowhere in the database file.
    path = sqlite_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT * FROM api_keys").fetchall()
    assert rows and not any(plain.split("_", 2)[2] in str(row) for row in rows)
    assert cli("revoke", key_id).returncode == 0
    assert httpx.get(f"{gw.base_url}/api/me", headers=auth(plain), timeout=10).status_code == 401
    assert cli("revoke", "0000000000000000").returncode == 1
    assert cli("create", "--user", "x", "--rpm", "0").returncode == 2
    assert cli("create", "--user", "x", "--tpm", str(2**31)).returncode == 2
