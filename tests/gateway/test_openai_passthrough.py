"""The gateway's /v1 against the server's own: the same request gets the same answer, a
refusal included, though the gateway always streams from its upstream."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.gateway.conftest import auth, launch_gateway, make_key
from tests.server.test_openai_sdk import MODEL
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
    {"messages": HI, "max_completion_tokens": 0},
    # The gateway streams from its upstream whatever the client asked: these it checks itself.
    {"messages": HI, "stream_options": {"include_usage": True}, "max_tokens": 4},
    {"messages": HI, "stream": "yes", "max_tokens": 4},
]


@pytest.mark.parametrize("body", BAD_REQUESTS)
def test_a_refusal_reaches_the_client_as_the_server_gave_it(server, gateway, body):
    gw, key = gateway
    path = "/v1/chat/completions"
    direct = httpx.post(server.base_url + path, json=body, timeout=60)
    relayed = httpx.post(gw.base_url + path, json=body, headers=auth(key), timeout=60)
    assert direct.status_code == relayed.status_code == 400
    assert relayed.json() == direct.json()
    if "max_completion_tokens" in body:  # the field the client sent, not the engine's name
        assert relayed.json()["error"]["param"] == "max_completion_tokens"


def test_completion_logprobs_read_the_same_through_the_gateway(server, gateway):
    gw, key = gateway
    ask = {"model": MODEL, "prompt": "One, two,", "max_tokens": 6, "temperature": 0}
    ask |= {"logprobs": 1, "echo": True, "n": 2}
    direct = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
    relayed = openai.OpenAI(base_url=f"{gw.base_url}/v1", api_key=key, max_retries=0)
    expected = direct.completions.create(**ask).choices
    got = relayed.completions.create(**ask).choices
    assert [c.logprobs for c in got] == [c.logprobs for c in expected]
    assert [c.text for c in got] == [c.text for c in expected]


def test_a_model_is_retrieved_through_the_gateway(server, gateway):
    gw, key = gateway
    direct = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
    relayed = openai.OpenAI(base_url=f"{gw.base_url}/v1", api_key=key, max_retries=0)
    assert relayed.models.retrieve(MODEL).id == direct.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError) as e:
        relayed.models.retrieve("gpt-99")
    assert e.value.body["code"] == "model_not_found"
