"""Who can reach what: files, pages and the internal services behind the gateway."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
import time

import httpx

from tests.gateway.conftest import auth, launch_gateway, make_key
from tests.router.conftest import launch_router
from tests.server_process import free_port, launch, start_server, wait_ready


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _log_once_it_has(gateway, text: str, timeout_s: float = 10.0) -> str:
    """The gateway's log once `text` is in it: it prints the admin-key line just after it starts
    answering /health, so a log read as soon as it is ready can be empty."""
    deadline = time.monotonic() + timeout_s
    while text not in (log := gateway.log()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return log


def test_state_files_are_private_and_the_admin_key_is_shown_once(tmp_path, server):
    state = tmp_path / "state"
    db = f"sqlite:///{state}/gateway.db"
    key_file = state / "admin-key"
    gw = launch_gateway(tmp_path, server.base_url, db, "--admin-key-file", str(key_file))
    try:
        assert _mode(state) == 0o700
        assert _mode(state / "gateway.db") == 0o600 and _mode(key_file) == 0o600
        key = key_file.read_text().strip()
        assert key in _log_once_it_has(gw, "new admin key:")
    finally:
        gw.stop()
    os.chmod(key_file, 0o644)  # an older install's file
    again = launch_gateway(tmp_path, server.base_url, db, "--admin-key-file", str(key_file))
    try:
        log = _log_once_it_has(again, "admin key: in")
        assert "admin key: in" in log and key not in log and _mode(key_file) == 0o600
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


def test_stream_options_that_are_not_an_object_are_a_400(gateway_factory, sqlite_url):
    key = make_key(sqlite_url, "alice")
    gw = gateway_factory(sqlite_url)
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "stream": True}
    for options in ("yes", [1], 1):
        r = httpx.post(
            f"{gw.base_url}/v1/chat/completions",
            json={**body, "stream_options": options},
            headers=auth(key),
            timeout=30,
        )
        assert r.status_code == 400, (options, r.text)
        assert r.json()["error"]["param"] == "stream_options"


def test_the_fleets_own_request_fields_stop_at_the_gateway(gateway_factory, sqlite_url):
    """The gateway may face a replica with no router between (as here): a client's
    chatfleet_continue would have a reply go on from tokens it made up, ahead of the queue,
    and chatfleet_token_ids would hand it the replica's token ids."""
    key = make_key(sqlite_url, "alice")
    gw = gateway_factory(sqlite_url)
    body = {"prompt": "hi", "max_tokens": 4, "stream": True, "chatfleet_token_ids": True}
    # A token id past any vocabulary: the replica refuses the request if the field reaches it.
    body["chatfleet_continue"] = {"token_ids": [10**9], "sent_chars": 0}
    url = f"{gw.base_url}/v1/completions"
    with httpx.stream("POST", url, json=body, headers=auth(key), timeout=60) as r:
        assert r.status_code == 200, r.read()
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert chunks and not any("chatfleet_token_ids" in c for c in chunks)


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


KEY = "internal-token-for-the-test"
CHAT = {
    "model": "SmolLM2-135M-Instruct",
    "messages": [{"role": "user", "content": "Say hi."}],
    "max_tokens": 4,
}


def _cmdlines() -> str:
    """Every process's command line, as `ps` shows them to any user."""
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as f:
                out.append(f.read().replace(b"\0", b" ").decode(errors="replace"))
    return "\n".join(out)


def test_router_and_replicas_with_a_key_demand_it_everywhere_but_health(tmp_path):
    """`chatfleet up` with CHATFLEET_API_KEY: the router and every replica demand it on
    /v1, /metrics and /router/replicas; the router sends it to its replicas; no command line
    carries it."""
    port = free_port()
    up = launch(
        tmp_path,
        "up",
        port,
        *("up", "--port", str(port), "--replicas", "1", "--replica-threads", "1"),
        *("--replica-port-start", str(free_port()), "--probe-interval", "0.2"),
        *("--replica-args", "--kv-cache-memory 64MiB --max-num-seqs 4"),
        env={"CHATFLEET_API_KEY": KEY},
    )
    try:
        wait_ready(up, "/ready", timeout_s=300)
        bearer = {"authorization": f"Bearer {KEY}"}
        replicas = httpx.get(f"{up.base_url}/router/replicas", headers=bearer, timeout=10)
        replica_url = replicas.json()["replicas"][0]["url"]
        for base in (up.base_url, replica_url):
            assert httpx.get(f"{base}/health", timeout=10).status_code == 200
            for path in ("/metrics", "/v1/models"):
                assert httpx.get(base + path, timeout=10).status_code == 401, base + path
                wrong = {"authorization": "Bearer nope"}
                assert httpx.get(base + path, headers=wrong, timeout=10).status_code == 401
                assert httpx.get(base + path, headers=bearer, timeout=10).status_code == 200
        assert httpx.get(f"{up.base_url}/router/replicas", timeout=10).status_code == 401
        r = httpx.post(f"{up.base_url}/v1/chat/completions", json=CHAT, timeout=60)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        ok = httpx.post(f"{up.base_url}/v1/chat/completions", json=CHAT, headers=bearer, timeout=60)
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] > 0
        assert KEY not in _cmdlines()
    finally:
        up.stop()


def test_fronts_beyond_loopback_refuse_to_start_without_a_key(tmp_path):
    """Nothing is bound: the check comes first."""
    for argv in (
        ["router", "--host", "0.0.0.0", "--replica", "http://127.0.0.1:9"],
        ["up", "--host", "0.0.0.0", "--replicas", "1"],
        ["serve", "--host", "0.0.0.0"],
    ):
        env = {k: v for k, v in os.environ.items() if k != "CHATFLEET_API_KEY"}
        run = subprocess.run(
            [sys.executable, "-m", "chatfleet.entrypoints.cli", *argv],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert run.returncode == 2, (argv, run.stderr[-500:])
        assert "would answer anyone" in run.stderr, argv


def test_the_server_key_comes_from_a_file_and_guards_metrics(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    srv = start_server(tmp_path, "--api-key-file", str(key_file))
    try:
        assert httpx.get(f"{srv.base_url}/metrics", timeout=10).status_code == 401
        bearer = {"authorization": f"Bearer {KEY}"}
        assert httpx.get(f"{srv.base_url}/metrics", headers=bearer, timeout=10).status_code == 200
        assert httpx.get(f"{srv.base_url}/ready", timeout=10).status_code == 200
    finally:
        srv.stop()
