"""Calibrate from outside: time a running OpenAI-compatible server's streams.

Two kinds of measurement, each a row of the same linear fit as in-process calibration:

  decode   D concurrent streams with C-token prompts: while all D are decoding, the gap
           between two chunks of a stream is one step of D decodes at context ~C, so the
           median of those gaps is a step-time sample.
  prefill  one request at a time with a P-token prompt and max_tokens 1: its TTFT is the
           server's fixed per-request cost (HTTP, template, tokenization, queue hand-offs,
           SSE) plus the prefill steps, chunked by the server's token budget.

The fit has one more coefficient than the step model, the per-request overhead, which only
the TTFT rows carry; the simulator adds it to every request (ServingOverhead.ingress_s).
`measure_overhead` keeps a given step model and fits that overhead alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import statistics
from collections.abc import Callable, Sequence

import numpy as np

from chatfleet.bench.client import ChatClient, ClientConfig, Exchange, resolve_model
from chatfleet.bench.datasets import random_text
from chatfleet.bench.record import RequestRecord
from chatfleet.bench.workload import BenchRequest
from chatfleet.plan.step_model import LinearStepModel, StepShape, StepTimeModel, features, fit_rows

DECODE_GRID = ((1, 64), (4, 64), (4, 512), (16, 64), (16, 512))  # (streams, prompt words)
PREFILL_WORDS = (8, 128, 512, 1024)
NUM_TAIL_GAPS = 16  # steps with every stream decoding, at least


def prefill_shapes(num_tokens: int, budget: int) -> list[StepShape]:
    """The steps a lone prompt is prefilled in: chunks of `budget` tokens, the last samples."""
    shapes, start = [], 0
    while start < num_tokens:
        n = min(budget, num_tokens - start)
        last = start + n == num_tokens
        shapes.append(StepShape(n, 1, n * (start + (n + 1) / 2), start + n, 0, 0, int(last)))
        start += n
    return shapes


async def _send(
    config: ClientConfig, requests: Sequence[BenchRequest], concurrent: bool
) -> list[Exchange]:
    import httpx

    async with httpx.AsyncClient(timeout=config.timeout_s) as http:
        model = await resolve_model(http, config)
        client = ChatClient(dataclasses.replace(config, model=model), http)
        if concurrent:
            return list(await asyncio.gather(*(client.send(r, 0.0) for r in requests)))
        return [await client.send(r, 0.0) for r in requests]


def _request(rng: random.Random, words: int, max_tokens: int) -> BenchRequest:
    return BenchRequest(0, 0, [{"role": "user", "content": random_text(rng, words)}], max_tokens)


def _ok(exchanges: list[Exchange]) -> list[Exchange]:
    bad = [e.record for e in exchanges if not e.record.is_success]
    if bad:
        raise RuntimeError(
            f"calibration request failed: {bad[0].error_type} {bad[0].error_message}"
        )
    return exchanges


def ttft_rows(config: ClientConfig, budget: int, repeats: int, rng: random.Random) -> list:
    """(summed features of the prefill steps, TTFT) per lone request."""
    rows = []
    for words in PREFILL_WORDS:
        requests = [_request(rng, words, 1) for _ in range(repeats)]
        for ex in _ok(asyncio.run(_send(config, requests, concurrent=False))):
            shapes = prefill_shapes(ex.record.prompt_tokens or words, budget)
            x = np.sum([features(s) for s in shapes], axis=0)
            rows.append((x, ex.record.ttft_s))
    return rows


def _all_decoding_gaps(records: Sequence[RequestRecord]) -> list[float]:
    """Inter-token gaps that lie where every stream is decoding: after the last stream's
    first token (all prefills done) and before the first stream's last token.

        stream 1   |.x..x..x..x..x..x|
        stream 2   |......x..x..x..x..x..x|
                          [  window  ]
    """
    begin = max(r.start_s + r.chunk_times_s[0] for r in records)
    end = min(r.start_s + r.chunk_times_s[-1] for r in records)
    gaps = []
    for r in records:
        times = [r.start_s + t for t in r.chunk_times_s]
        gaps += [b - a for a, b in zip(times, times[1:], strict=False) if a >= begin and b <= end]
    return gaps


def decode_rows(config: ClientConfig, budget: int, rng: random.Random) -> list:
    rows = []
    for streams, words in DECODE_GRID:
        # Long enough that all streams decode together for NUM_TAIL_GAPS steps at least.
        max_tokens = -(-streams * words * 2 // budget) + NUM_TAIL_GAPS + 8
        requests = [_request(rng, words, max_tokens) for _ in range(streams)]
        exchanges = _ok(asyncio.run(_send(config, requests, concurrent=True)))
        gaps = _all_decoding_gaps([ex.record for ex in exchanges])
        if not gaps:
            continue
        prompt = statistics.mean(ex.record.prompt_tokens or words for ex in exchanges)
        context = int(streams * (prompt + max_tokens / 2))
        shape = StepShape(
            num_decode_seqs=streams, decode_context_tokens=context, num_sampled=streams
        )
        rows.append((np.array(features(shape)), statistics.median(gaps)))
    return rows


def calibrate_http(
    base_url: str, budget: int = 512, log: Callable[[str], None] = lambda s: None
) -> LinearStepModel:
    """Fit the step model and the per-request overhead from a server's stream timings."""
    config = ClientConfig(base_url, ignore_eos=True)
    rng = random.Random(0)
    asyncio.run(_send(config, [_request(rng, 16, 4) for _ in range(3)], concurrent=False))  # warm
    ttft = ttft_rows(config, budget, 3, rng)
    log(f"calibrate: {len(ttft)} TTFT samples")
    decode = decode_rows(config, budget, rng)
    log(f"calibrate: {len(decode)} decode samples")
    x = np.array([[*xr, 1.0] for xr, _ in ttft] + [[*xr, 0.0] for xr, _ in decode])
    y = np.array([t for _, t in ttft] + [t for _, t in decode])
    coef, error = fit_rows(x, y)
    meta = {
        "method": "http stream timings (TTFT of lone requests, late inter-token gaps)",
        "base_url": base_url,
        "max_num_batched_tokens": budget,
        "request_overhead_s": float(coef[-1]),
        "num_samples": len(y),
    }
    return LinearStepModel(tuple(float(c) for c in coef[:-1]), error, meta)


def measure_overhead(
    base_url: str, step_model: StepTimeModel, budget: int = 512, repeats: int = 5
) -> float:
    """Median of TTFT minus the model's prefill time, over lone requests of several sizes."""
    config = ClientConfig(base_url, ignore_eos=True)
    rng = random.Random(1)
    asyncio.run(_send(config, [_request(rng, 16, 4) for _ in range(3)], concurrent=False))  # warm
    residuals = []
    for words in PREFILL_WORDS:
        requests = [_request(rng, words, 1) for _ in range(repeats)]
        for ex in _ok(asyncio.run(_send(config, requests, concurrent=False))):
            shapes = prefill_shapes(ex.record.prompt_tokens or words, budget)
            predicted = sum(step_model.step_time_s(s) for s in shapes)
            residuals.append((ex.record.ttft_s or 0.0) - predicted)
    return max(0.0, statistics.median(residuals))
