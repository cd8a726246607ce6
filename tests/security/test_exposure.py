"""Who can reach what: files, pages and the internal services behind the gateway."""

from __future__ import annotations

import os
import stat

import httpx

from tests.gateway.conftest import auth, launch_gateway, make_key
from tests.router.conftest import launch_router


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_state_files_are_private_and_the_admin_key_is_shown_once(tmp_path, server):
    state = tmp_path / "state"
    db = f"sqlite:///{state}/gateway.db"
    key_file = state / "admin-key"
    gw = launch_gateway(tmp_path, server.base_url, db, "--admin-key-file", str(key_file))
    try:
        assert _mode(state) == 0o700
        assert _mode(state / "gateway.db") == 0o600 and _mode(key_file) == 0o600
        key = key_file.read_text().strip()
        assert key in gw.log()
    finally:
        gw.stop()
    os.chmod(key_file, 0o644)  # an older install's file
    again = launch_gateway(tmp_path, server.base_url, db, "--admin-key-file", str(key_file))
    try:
        assert key not in again.log() and _mode(key_file) == 0o600
        assert key_file.read_text().strip() == key
        r = httpx.get(f"{again.base_url}/api/me", headers=auth(key), timeout=10)
        assert r.status_code == 200 and r.json()["is_admin"]
    finally:
        again.stop()


def test_every_html_response_carries_the_page_policy(gateway_factory, sqlite_url):
    gw = gateway_factory(sqlite_url)
    for path in ("/", "/static/index.html"):
        r = httpx.get(gw.base_url + path, timeout=10)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert "script-src 'self'" in r.headers["content-security-policy"]
        assert r.headers["x-content-type-options"] == "nosniff"


def test_odd_query_digits_are_a_400_not_a_500(gateway_factory, sqlite_url):
    key = make_key(sqlite_url, "alice")
    gw = gateway_factory(sqlite_url)
    for query in ("limit=%C2%B2", "limit=%D9%A3", "limit=-1", "limit=99999999999999999999"):
        r = httpx.get(f"{gw.base_url}/api/conversations?{query}", headers=auth(key), timeout=10)
        assert r.status_code == 400 and r.json()["error"]["param"] == "limit", query


def test_deeply_nested_json_through_the_router_is_a_400(tmp_path, server):
    router = launch_router(tmp_path, [server.base_url])
    try:
        body = "[" * 100_000 + "]" * 100_000
        r = httpx.post(
            f"{router.base_url}/v1/chat/completions",
            content=body,
            headers={"content-type": "application/json"},
            timeout=30,
        )
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    finally:
        router.stop()
