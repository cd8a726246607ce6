"""The gateway's /v1 against the server's own: the same request gets the same answer, a
refusal included, though the gateway always streams from its upstream."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.gateway.conftest import auth, launch_gateway, make_key
from tests.server_process import ServerProcess


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, server) -> Iterator[tuple[ServerProcess, str]]:
    tmp = tmp_path_factory.mktemp("gw")
    db_url = f"sqlite:///{tmp}/gateway.db"
    key = make_key(db_url, "alice")
    gw = launch_gateway(tmp, server.base_url, db_url)
    yield gw, key
    gw.stop()


HI = [{"role": "user", "content": "hi"}]
BAD_REQUESTS = [
    {"messages": HI, "temperature": "hot", "max_tokens": 4},
    {"messages": HI, "top_p": 2, "max_tokens": 4},
    {"messages": [], "max_tokens": 4},
]


@pytest.mark.parametrize("body", BAD_REQUESTS)
def test_a_refusal_reaches_the_client_as_the_server_gave_it(server, gateway, body):
    gw, key = gateway
    path = "/v1/chat/completions"
    direct = httpx.post(server.base_url + path, json=body, timeout=60)
    relayed = httpx.post(gw.base_url + path, json=body, headers=auth(key), timeout=60)
    assert direct.status_code == relayed.status_code == 400
    assert relayed.json() == direct.json()
