"""The router's OpenAI-compatible front over real replicas: streams pass through unchanged
and as they are generated, errors keep their status and shape."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.router.conftest import (
    FAST_HEALTH,
    MODEL,
    launch_router,
    replica_states,
    router_metric,
)
from tests.server.test_structured_api import ASK, WEATHER, City, one_required_call

pytestmark = pytest.mark.e2e  # starts its own servers

QUESTION = [{"role": "user", "content": "Name three colours of the rainbow."}]


def sdk(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)


def timed_stream(client: openai.OpenAI, **kwargs) -> tuple[list, list[float]]:
    chunks, times = [], []
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        chunks.append(chunk)
        times.append(time.monotonic())
    return chunks, times


def test_streaming_through_the_router_is_the_replicas_stream(replicas, router_factory):
    router = router_factory(replicas, "--policy", "round_robin")
    kwargs = dict(
        model=MODEL,
        messages=QUESTION,
        temperature=0,
        max_tokens=48,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    direct, direct_times = timed_stream(sdk(replicas[0].base_url), **kwargs)
    routed, times = timed_stream(sdk(router.base_url), **kwargs)

    def shape(chunks):
        """Everything but ids, timestamps and cached-token counts (caches differ by replica)."""
        return [
            (
                c.object,
                c.model,
                [(ch.index, ch.delta.role, ch.delta.content, ch.finish_reason) for ch in c.choices],
                c.usage and (c.usage.prompt_tokens, c.usage.completion_tokens),
            )
            for c in chunks
        ]

    assert shape(routed) == shape(direct)
    assert len({c.id for c in routed}) == 1
    assert routed[-1].usage.completion_tokens == 48
    # Relayed as generated, not buffered: the chunks come spread over the generation as the
    # replica's own do (a buffered reply arrives at once). The time to the first token is left
    # out: under load a replica's first prefill alone can take half the reply's time.
    spread = lambda t: t[-1] - t[1]  # noqa: E731
    assert spread(times) > 0.5 * spread(direct_times)


def test_non_streamed_completions_and_models_pass_through(replicas, router_factory):
    router = router_factory(replicas, "--policy", "least_loaded")
    direct, routed = sdk(replicas[1].base_url), sdk(router.base_url)
    kwargs = dict(model=MODEL, prompt="The sea is", temperature=0, max_tokens=12)
    assert routed.completions.create(**kwargs).choices[0].text == (
        direct.completions.create(**kwargs).choices[0].text
    )
    assert [m.id for m in routed.models.list().data] == [MODEL]
    assert routed.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        routed.models.retrieve("gpt-99")


def test_tools_and_schemas_pass_through_the_router(replicas, router_factory):
    router = router_factory(replicas, "--policy", "round_robin")
    client = sdk(router.base_url)
    one_required_call(client, [WEATHER])
    with client.chat.completions.stream(
        model=MODEL, messages=ASK, response_format=City, max_tokens=80, temperature=0
    ) as stream:
        assert isinstance(stream.get_final_completion().choices[0].message.parsed, City)


def test_client_errors_keep_their_status_and_openai_shape(replicas, router_factory):
    router = router_factory(replicas)
    bad = {"model": MODEL, "messages": QUESTION, "temperature": "hot"}
    via = httpx.post(f"{router.base_url}/v1/chat/completions", json=bad, timeout=30)
    direct = httpx.post(f"{replicas[0].base_url}/v1/chat/completions", json=bad, timeout=30)
    assert via.status_code == direct.status_code == 400
    assert via.json() == direct.json()
    with pytest.raises(openai.NotFoundError) as e:
        sdk(router.base_url).chat.completions.create(model="nope", messages=QUESTION)
    assert e.value.body["code"] == "model_not_found"
    broken = httpx.post(
        f"{router.base_url}/v1/chat/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert broken.status_code == 400 and broken.json()["error"]["type"] == "invalid_request_error"
    huge = httpx.post(f"{router.base_url}/v1/completions", content=b"x" * (5 << 20), timeout=30)
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "request_too_large"
    # Client errors are the client's: no retries, no failures counted against replicas.
    assert router_metric(router, "chatfleet_router_retries_total") == 0
    assert all(s["consecutive_failures"] == 0 for s in replica_states(router).values())


def test_no_eligible_replica_is_503_with_retry_after(tmp_path):
    # Port 9 (discard) has no server: the router's only replica never becomes eligible.
    router = launch_router(tmp_path, ["http://127.0.0.1:9"], *FAST_HEALTH)
    try:
        assert httpx.get(f"{router.base_url}/ready", timeout=10).status_code == 503
        body = {"model": MODEL, "messages": QUESTION}
        r = httpx.post(f"{router.base_url}/v1/chat/completions", json=body, timeout=30)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "no_replica_available"
    finally:
        router.stop()
