"""Slow and hostile clients: half-sent requests are cut off at the header and body deadlines
on every front (server, router, gateway), a normal request answers while 500 of them are
open, and connections past the cap are answered 503 at once."""

from __future__ import annotations

import contextlib
import json
import selectors
import socket
import time

import httpx

from tests.gateway.conftest import make_key
from tests.router.conftest import launch_router
from tests.server_process import ServerProcess, start_server

SLOW = 500
LIMITS = ("--http-header-timeout", "1", "--http-body-timeout", "1")
CHAT_HEAD = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"


def _open_slow(port: int, count: int, bearer: str | None) -> list[socket.socket]:
    """`count` connections, half stopped inside their headers and half inside their body."""
    auth = f"Authorization: Bearer {bearer}\r\n" if bearer else ""
    socks = []
    for i in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        if i % 2:
            s.sendall(CHAT_HEAD.encode())
        else:
            head = f"{CHAT_HEAD}{auth}Content-Type: application/json\r\nContent-Length: 100000\r\n"
            s.sendall(f"{head}\r\n{{".encode())
        socks.append(s)
    return socks


def _closed_by_server(socks: list[socket.socket], timeout_s: float) -> tuple[int, list[bytes]]:
    """How many of `socks` the server closed within `timeout_s`, and what it said first."""
    sel = selectors.DefaultSelector()
    replies: dict[socket.socket, bytes] = {}
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        replies[s] = b""
    closed = 0
    deadline = time.monotonic() + timeout_s
    while closed < len(socks) and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.5):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            try:
                data = s.recv(65536)
            except ConnectionResetError:
                data = b""
            if data:
                replies[s] += data
                continue
            sel.unregister(s)
            closed += 1
    sel.close()
    return closed, [r for r in replies.values() if r]


def _hold_off(front: ServerProcess, bearer: str | None, normal: httpx.Request) -> None:
    port = int(front.base_url.rsplit(":", 1)[1])
    socks = _open_slow(port, SLOW, bearer)
    try:
        with httpx.Client(timeout=30) as client:
            r = client.send(normal)
        assert r.status_code == 200, r.text
        closed, replies = _closed_by_server(socks, timeout_s=20)
        assert closed == SLOW
        # Cut off mid-body: the body reader's 408 in OpenAI's shape (mid-header: just closed).
        assert replies and all(b" 408 " in r.split(b"\r\n", 1)[0] for r in replies)
        assert all(
            json.loads(r.partition(b"\r\n\r\n")[2])["error"]["code"] == "body_timeout"
            for r in replies
        )
    finally:
        for s in socks:
            s.close()


def test_the_server_cuts_off_half_sent_requests(tmp_path):
    server = start_server(tmp_path, *LIMITS)
    try:
        _hold_off(server, None, httpx.Request("GET", f"{server.base_url}/v1/models"))
    finally:
        server.stop()


def test_the_router_cuts_off_half_sent_requests(tmp_path, server):
    router = launch_router(tmp_path, [server.base_url], *LIMITS)
    try:
        _hold_off(router, None, httpx.Request("GET", f"{router.base_url}/v1/models"))
    finally:
        router.stop()


def test_the_gateway_cuts_off_half_sent_requests(gateway_factory, sqlite_url):
    key = make_key(sqlite_url, "alice")
    gw = gateway_factory(sqlite_url, *LIMITS)
    normal = httpx.Request(
        "GET", f"{gw.base_url}/v1/models", headers={"authorization": f"Bearer {key}"}
    )
    _hold_off(gw, key, normal)


def test_connections_past_the_cap_are_answered_503(tmp_path, server):
    cap = 20
    router = launch_router(tmp_path, [server.base_url], "--http-max-connections", str(cap))
    port = int(router.base_url.rsplit(":", 1)[1])
    idle: list[socket.socket] = []
    try:
        idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(cap)]
        time.sleep(0.5)  # every one accepted before the next
        with socket.create_connection(("127.0.0.1", port), timeout=10) as extra:
            extra.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := extra.recv(65536):
                    reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in head.lower()
        assert json.loads(body)["error"]["code"] == "overloaded"
        for s in idle:
            s.close()
        idle = []
        with httpx.Client(timeout=10) as client:
            ok = [client.get(f"{router.base_url}/health").status_code for _ in range(3)]
        assert ok == [200, 200, 200]
    finally:
        for s in idle:
            s.close()
        router.stop()


def test_requests_the_parser_refuses_get_an_openai_shaped_400(gateway_factory, sqlite_url):
    gw = gateway_factory(sqlite_url)
    port = int(gw.base_url.rsplit(":", 1)[1])
    bad = [
        f"{CHAT_HEAD}Content-Length: abc\r\n\r\n",
        f"{CHAT_HEAD}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        "NOT HTTP\r\n\r\n",
    ]
    for raw in bad:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(raw.encode())
            reply = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := s.recv(65536):  # the server closes the connection after it
                    reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 "), reply
        assert b"content-type: application/json" in head.lower(), reply
        error = json.loads(body)["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error", error
