"""AsyncEngine: concurrent streams, cancellation frees blocks, errors before the first yield."""

from __future__ import annotations

import asyncio
import time

import pytest

from chatfleet import SamplingParams
from chatfleet.config.engine_config import EngineConfig
from chatfleet.engine.async_engine import AsyncEngine
from chatfleet.errors import InvalidRequestError
from tests.conftest import TEST_CACHE


@pytest.fixture(scope="module")
def engine():
    eng = AsyncEngine(EngineConfig(cache=TEST_CACHE))
    yield eng
    eng.shutdown()


async def _collect(engine, prompt, params):
    deltas, last = [], None
    async for out in engine.generate(prompt, params):
        deltas.append(out.outputs[0].delta_text)
        last = out
    return "".join(deltas), last


def test_concurrent_streams_match_their_final_text(engine, llm):
    params = SamplingParams(temperature=0, max_tokens=24)
    prompts = ["The capital of France is", "List three colors:", "2 + 2 ="]

    async def main():
        return await asyncio.gather(*(_collect(engine, p, params) for p in prompts))

    results = asyncio.run(main())
    expected = llm.generate(prompts, params)
    for (streamed, last), exp in zip(results, expected, strict=True):
        assert last.finished
        assert streamed == last.outputs[0].text == exp.outputs[0].text


def test_cancel_mid_stream_aborts_and_frees_blocks(engine):
    params = SamplingParams(temperature=0, max_tokens=500, ignore_eos=True)

    async def main():
        agen = engine.generate("Write a very long essay about the sea.", params)
        count = 0
        async for _ in agen:
            count += 1
            if count == 3:
                break
        await agen.aclose()
        for _ in range(100):  # bounded wait for the abort to land on the engine thread
            running = await engine.call(lambda e: e.scheduler.num_running)
            if running == 0:
                break
            await asyncio.sleep(0.02)
        return await engine.call(
            lambda e: (
                e.scheduler.num_running,
                e.kv_cache_manager.pool.num_free_blocks,
                e.kv_cache_manager.pool.num_blocks,
            )
        )

    running, free, total = asyncio.run(main())
    assert running == 0 and free == total


def test_invalid_request_raises_before_streaming(engine):
    async def main():
        async for _ in engine.generate("hi", SamplingParams(stop_token_ids=[10**8])):
            pass

    with pytest.raises(InvalidRequestError):
        asyncio.run(main())
    engine.check_health()


def test_abort_from_outside_ends_the_stream(engine):
    params = SamplingParams(temperature=0, max_tokens=500, ignore_eos=True)

    async def main():
        outs = []
        async for out in engine.generate("Tell me a long tale.", params, request_id="ext"):
            outs.append(out)
            if len(outs) == 2:
                await engine.abort("ext")
        free = await engine.call(lambda e: e.kv_cache_manager.pool.num_free_blocks)
        total = await engine.call(lambda e: e.kv_cache_manager.pool.num_blocks)
        return outs, free, total

    outs, free, total = asyncio.run(asyncio.wait_for(main(), timeout=60))
    assert outs[-1].finished and outs[-1].outputs[0].finish_reason == "abort"
    assert len(outs[-1].outputs[0].token_ids) < 500
    assert free == total


def test_a_caller_gone_before_its_request_is_taken_leaves_the_engine_running(engine):
    """A client that leaves while its request waits in the engine's inbox cancels that
    command; the engine thread must skip it, not die on the cancelled future (it did: every
    later request and /metrics hung, found by fuzzing the API)."""

    async def main() -> int:
        # Hold the engine thread so the next command waits in the inbox.
        busy = asyncio.ensure_future(engine.call(lambda e: time.sleep(0.5)))
        await asyncio.sleep(0.05)
        params = SamplingParams(max_tokens=4)
        gone = asyncio.ensure_future(_collect(engine, [10**9], params))  # fails when run
        await asyncio.sleep(0.05)
        gone.cancel()
        await busy
        await asyncio.gather(gone, return_exceptions=True)
        text, _ = await asyncio.wait_for(_collect(engine, "Hello", params), 30)
        return len(text)

    assert asyncio.run(main()) > 0
    assert not engine.is_dead
