"""Shared fixtures: real engines on the real default model (loaded once per session), and one
real `chatfleet serve` process for the server and bench tests; and the test tiers.

Every test carries one tier marker: `e2e` (starts real servers: chatfleet processes,
PostgreSQL, Redis), `browser` (Chromium), `ray` (a Ray cluster), `gpu` (a CUDA device), or
else `unit` (in-process, the real model included). `make test` runs them all; `make
test-fast` runs `-m unit`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from chatfleet import LLM
from chatfleet.config.engine_config import CacheConfig, SchedulerConfig
from tests.server_process import ServerProcess, start_server

# A modest KV budget keeps start-up fast; the default model needs ~46 KiB per token in fp32.
TEST_CACHE = CacheConfig(kv_cache_memory_bytes=256 << 20)


def make_llm(**overrides) -> LLM:
    overrides.setdefault("cache", TEST_CACHE)
    return LLM(**overrides)


@pytest.fixture(scope="session")
def llm() -> LLM:
    return make_llm()


@pytest.fixture(scope="session")
def small_step_llm() -> LLM:
    """Tiny token budget: long prompts are chunked and mixed with decodes of others."""
    return make_llm(scheduler=SchedulerConfig(max_num_batched_tokens=48, max_num_seqs=16))


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Iterator[ServerProcess]:
    """Also writes a step trace: tmp/steps-{pid}.jsonl (see `step_trace_path`)."""
    tmp = tmp_path_factory.mktemp("srv")
    trace = str(tmp / "steps-{pid}.jsonl")
    srv = start_server(tmp, "--max-num-seqs", "16", "--step-trace", trace)
    yield srv
    srv.stop()


# Fixtures that start real processes: a test using one is end to end.
_E2E_FIXTURES = frozenset(
    {"server", "replicas", "router_factory", "gateway_factory", "postgres", "redis_server"}
)
_TIERS = ("e2e", "browser", "ray", "gpu")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.path)).parts
        if "ray" in parts:
            item.add_marker(pytest.mark.ray)
        elif item.path.name == "test_browser.py":
            item.add_marker(pytest.mark.browser)
        elif _E2E_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)
        if not any(item.get_closest_marker(tier) for tier in _TIERS):
            item.add_marker(pytest.mark.unit)
