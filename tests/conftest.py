"""Shared fixtures: real engines on the real default model (loaded once per session)."""

from __future__ import annotations

import pytest

from chatfleet import LLM
from chatfleet.config import CacheConfig, SchedulerConfig

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
