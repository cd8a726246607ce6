"""Gateway-test helpers: real gateways (subprocesses) over the session's real `chatfleet
serve`, real SQLite files, and one real PostgreSQL and Redis for the package."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from chatfleet.gateway.store import open_store
from tests.gateway.services import Service, create_database, start_postgres, start_redis
from tests.server_process import ServerProcess, free_port, launch, wait_ready

# Fast heartbeats so an interrupted reply is reported "incomplete" within seconds.
FAST_REPLIES = ("--flush-interval", "0.2", "--stale-after", "1.5")


@pytest.fixture(scope="package")
def postgres() -> Iterator[Service]:
    service = start_postgres()
    yield service
    service.stop()


@pytest.fixture(scope="package")
def redis_server() -> Iterator[Service]:
    service = start_redis()
    yield service
    service.stop()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/gateway.db"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path) -> str:
    """Each test using this runs on both stores."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/gateway.db"
    return create_database(request.getfixturevalue("postgres").url)


def make_key(db_url: str, user: str, **limits) -> str:
    """A key for `user` (made if new) written straight into the database; the plain key."""
    store = open_store(db_url)
    try:
        owner = store.get_user_by_name(user) or store.create_user(user, limits.pop("admin", False))
        return store.create_key(owner.user_id, **limits)[1]
    finally:
        store.close()


def launch_gateway(tmp_path, upstream_url: str, db_url: str, *args: str) -> ServerProcess:
    port = free_port()
    cmd = ["gateway", "--port", str(port), "--upstream", upstream_url, "--db", db_url]
    cmd += ["--admin-key-file", "", "--default-temperature", "0", *FAST_REPLIES, *args]
    return wait_ready(launch(tmp_path, "gateway", port, *cmd), "/health")


@pytest.fixture
def gateway_factory(tmp_path, server) -> Iterator[Callable[..., ServerProcess]]:
    """launch_gateway over the session's `chatfleet serve`; every gateway stopped at the end."""
    started: list[ServerProcess] = []

    def make(db_url: str, *args: str, upstream: str | None = None) -> ServerProcess:
        gw = launch_gateway(tmp_path, upstream or server.base_url, db_url, *args)
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.stop()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class Streamed:
    status: int
    headers: httpx.Headers
    events: list[dict] = field(default_factory=list)
    body: dict | None = None  # the JSON error body when status != 200
    exception: str | None = None  # set when the connection broke mid-stream

    @property
    def text(self) -> str:
        return "".join(e["content"] for e in self.events if e.get("type") == "delta")

    @property
    def end(self) -> dict | None:
        return next((e for e in self.events if e.get("type") == "end"), None)


def post_sse(
    base_url: str,
    key: str,
    path: str,
    body: dict,
    on_event: Callable[[dict], bool] | None = None,
    timeout_s: float = 120,
) -> Streamed:
    """POST and read the SSE reply. `on_event` returning True stops reading (the connection
    closes: the client has left)."""
    with httpx.stream(
        "POST", base_url + path, json=body, headers=auth(key), timeout=timeout_s
    ) as r:
        out = Streamed(r.status_code, r.headers)
        if r.status_code != 200:
            r.read()
            out.body = r.json()
            return out
        try:
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                out.events.append(event)
                if on_event is not None and on_event(event):
                    break
        except httpx.HTTPError as e:  # the server went away mid-stream
            out.exception = repr(e)
    return out


def new_conversation(base_url: str, key: str, **body) -> str:
    r = httpx.post(f"{base_url}/api/conversations", json=body, headers=auth(key), timeout=10)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def say(base_url: str, key: str, conversation_id: str, content: str, **opts) -> Streamed:
    body = {"content": content, "max_tokens": 16, **opts}
    return post_sse(base_url, key, f"/api/conversations/{conversation_id}/messages", body)


def get_conversation(base_url: str, key: str, conversation_id: str) -> httpx.Response:
    return httpx.get(
        f"{base_url}/api/conversations/{conversation_id}", headers=auth(key), timeout=10
    )


def usage_row(base_url: str, key: str) -> dict:
    """The key's user's first usage row (none yet: zeros)."""
    rows = httpx.get(f"{base_url}/api/usage", headers=auth(key), timeout=10).json()["data"]
    return rows[0] if rows else {"num_requests": 0, "completion_tokens": 0}
