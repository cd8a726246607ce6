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

`measure_serving_overhead` keeps a given (in-process) step model and fits what a server adds
to it (overhead.py, `ServingOverhead`) on the same two kinds of measurement:

  lone TTFT   - model prefill  = ingress_s + steps * step_s + sampled_token_s
                                 + prompt tokens * prefill_token_s
  decode gap  - model step     = step_s + streams per replica * sampled_token_s

Residuals are fitted by weighted least squares (relative to the measured time, as the step
model is), the step terms without sign constraints, and bootstrapped for their spread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import statistics
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from chatfleet.bench.client import ChatClient, ClientConfig, Exchange, resolve_model
from chatfleet.bench.datasets import random_text
from chatfleet.bench.record import RequestRecord
from chatfleet.bench.workload import BenchRequest
from chatfleet.plan.overhead import META_KEY, ServingOverhead
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


@dataclass(frozen=True)
class GapSample:
    """The median inter-token gap while `num_streams` concurrent streams all decode."""

    num_streams: int
    prompt_tokens: float  # mean over the streams
    max_tokens: int
    gap_s: float
    num_gaps: int

    def decode_shape(self, num_replicas: int) -> StepShape:
        """One replica's step, the streams split evenly over `num_replicas` (a router's
        least-loaded choice with all arriving at once)."""
        n = -(-self.num_streams // num_replicas)
        context = int(n * (self.prompt_tokens + self.max_tokens / 2))
        return StepShape(num_decode_seqs=n, decode_context_tokens=context, num_sampled=n)


def measure_gap(
    config: ClientConfig, rng: random.Random, streams: int, words: int, max_tokens: int
) -> GapSample | None:
    requests = [_request(rng, words, max_tokens) for _ in range(streams)]
    exchanges = _ok(asyncio.run(_send(config, requests, concurrent=True)))
    gaps = _all_decoding_gaps([ex.record for ex in exchanges])
    if not gaps:
        return None
    prompt = statistics.mean(ex.record.prompt_tokens or words for ex in exchanges)
    return GapSample(streams, prompt, max_tokens, statistics.median(gaps), len(gaps))


def decode_rows(config: ClientConfig, budget: int, rng: random.Random) -> list:
    rows = []
    for streams, words in DECODE_GRID:
        # Long enough that all streams decode together for NUM_TAIL_GAPS steps at least.
        max_tokens = -(-streams * words * 2 // budget) + NUM_TAIL_GAPS + 8
        sample = measure_gap(config, rng, streams, words, max_tokens)
        if sample is not None:
            rows.append((np.array(features(sample.decode_shape(1))), sample.gap_s))
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
        META_KEY: ServingOverhead(ingress_s=float(coef[-1])).to_meta(),
        "num_samples": len(y),
    }
    return LinearStepModel(tuple(float(c) for c in coef[:-1]), error, meta)


# ---- the serving overhead around a given step model --------------------------------------
OVERHEAD_TERMS = ("ingress_s", "step_s", "sampled_token_s", "prefill_token_s")


@dataclass(frozen=True)
class OverheadPlan:
    """What `measure_serving_overhead` sends; rounds interleave the sizes so that a drift of
    the machine's speed touches every size alike."""

    prefill_words: tuple[int, ...] = (8, 32, 96, 256, 512)  # lone requests, max_tokens 1
    # Concurrent streams (64-word prompts), up to the batches a loaded fleet runs: terms
    # fitted on small batches alone extrapolate badly to full ones (a negative per-row term
    # that over-predicts how much a saturated replica serves).
    stream_counts: tuple[int, ...] = (1, 2, 8, 32, 64)
    num_rounds: int = 4
    gap_max_tokens: int = 64
    num_bootstrap: int = 200


def num_replicas_behind(base_url: str) -> int:
    """Eligible replicas behind a chatfleet router (its /router/replicas), else 1."""
    try:
        with urllib.request.urlopen(f"{base_url.rstrip('/')}/router/replicas", timeout=10) as r:
            states = json.loads(r.read())["replicas"]
    except (OSError, ValueError, KeyError, TypeError):
        return 1
    return max(1, sum(1 for s in states if s.get("eligible")))


def overhead_rows(
    model: StepTimeModel,
    ttfts: Sequence[tuple[int, int, float]],
    gaps: Sequence[GapSample],
    budget: int,
    num_replicas: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x over OVERHEAD_TERMS, measured - model, measured) for lone TTFTs (words, prompt
    tokens, seconds) and decode gaps."""
    x, resid, measured = [], [], []
    for _, prompt_tokens, ttft_s in ttfts:
        shapes = prefill_shapes(prompt_tokens, budget)
        x.append([1.0, len(shapes), 1.0, prompt_tokens])
        resid.append(ttft_s - sum(model.step_time_s(s) for s in shapes))
        measured.append(ttft_s)
    for g in gaps:
        shape = g.decode_shape(num_replicas)
        x.append([0.0, 1.0, shape.num_sampled, 0.0])
        resid.append(g.gap_s - model.step_time_s(shape))
        measured.append(g.gap_s)
    return np.array(x), np.array(resid), np.array(measured)


def fit_overhead(x: np.ndarray, resid: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Least squares on residuals relative to the measured times. The step terms are signed
    (corrections of the step model); the ingress is a delay and cannot be negative, so a
    negative one is refitted as 0 (the report keeps the unconstrained value)."""
    a, b = x / measured[:, None], resid / measured
    coef = np.linalg.lstsq(a, b, rcond=None)[0]
    if coef[0] < 0:
        coef = np.concatenate([[0.0], np.linalg.lstsq(a[:, 1:], b, rcond=None)[0]])
    return coef


def _unconstrained(x: np.ndarray, resid: np.ndarray, measured: np.ndarray) -> list[float]:
    return np.linalg.lstsq(x / measured[:, None], resid / measured, rcond=None)[0].tolist()


def bootstrap_spread(
    x: np.ndarray, resid: np.ndarray, measured: np.ndarray, num_ttft: int, num: int
) -> np.ndarray:
    """[p10, p90] per term over refits on resampled rows (TTFT and gap rows resampled
    separately, so that every refit sees both kinds)."""
    rng = np.random.default_rng(0)
    n = len(resid)
    fits = []
    for _ in range(num):
        idx = np.concatenate(
            [rng.integers(0, num_ttft, num_ttft), rng.integers(num_ttft, n, n - num_ttft)]
        )
        fits.append(fit_overhead(x[idx], resid[idx], measured[idx]))
    return np.percentile(np.array(fits), [10, 90], axis=0).T


def measure_serving_overhead(
    base_url: str,
    model: StepTimeModel,
    budget: int = 512,
    plan: OverheadPlan | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> tuple[ServingOverhead, dict[str, Any]]:
    """What the server at `base_url` adds to `model`'s steps, and how it was found (every
    term's bootstrap p10/p90, per size and stream count the measured and modelled times)."""
    plan = plan or OverheadPlan()
    config = ClientConfig(base_url, ignore_eos=True)
    num_replicas = num_replicas_behind(base_url)
    rng = random.Random(1)
    asyncio.run(_send(config, [_request(rng, 16, 4) for _ in range(3)], concurrent=False))  # warm
    ttfts: list[tuple[int, int, float]] = []
    gaps: list[GapSample] = []
    for k in range(plan.num_rounds):
        requests = [_request(rng, words, 1) for words in plan.prefill_words]
        exchanges = _ok(asyncio.run(_send(config, requests, concurrent=False)))
        for ex, words in zip(exchanges, plan.prefill_words, strict=True):
            if ex.record.ttft_s is not None:  # None: the one token decoded to no text
                ttfts.append((words, ex.record.prompt_tokens or words, ex.record.ttft_s))
        for streams in plan.stream_counts:
            gap = measure_gap(config, rng, streams, 64, plan.gap_max_tokens)
            if gap is not None:
                gaps.append(gap)
        log(f"calibrate: overhead round {k + 1}/{plan.num_rounds}")
    x, resid, measured = overhead_rows(model, ttfts, gaps, budget, num_replicas)
    coef = fit_overhead(x, resid, measured)
    spread = bootstrap_spread(x, resid, measured, len(ttfts), plan.num_bootstrap)
    overhead = ServingOverhead(**{t: float(c) for t, c in zip(OVERHEAD_TERMS, coef, strict=True)})
    report = {
        "base_url": base_url,
        "num_replicas_behind": num_replicas,
        "plan": dataclasses.asdict(plan),
        "terms_p10_p90": dict(zip(OVERHEAD_TERMS, spread.tolist(), strict=True)),
        "terms_unconstrained": dict(
            zip(OVERHEAD_TERMS, _unconstrained(x, resid, measured), strict=True)
        ),
        "ttft_by_words": _ttft_by_words(ttfts, model, budget),
        "gap_by_streams": _gap_by_streams(gaps, model, num_replicas),
        "num_ttft_samples": len(ttfts),
        "num_gap_samples": len(gaps),
    }
    return overhead, report


def _ttft_by_words(
    ttfts: Sequence[tuple[int, int, float]], model: StepTimeModel, budget: int
) -> dict[str, dict[str, float]]:
    """Per prompt size: median measured TTFT, its min and max, and the model's prefill time."""
    out = {}
    for words in sorted({w for w, _, _ in ttfts}):
        tokens = int(statistics.median(p for w, p, _ in ttfts if w == words))
        times = [t for w, _, t in ttfts if w == words]
        out[str(words)] = {
            "prompt_tokens": tokens,
            "median_s": statistics.median(times),
            "min_s": min(times),
            "max_s": max(times),
            "model_prefill_s": sum(model.step_time_s(s) for s in prefill_shapes(tokens, budget)),
        }
    return out


def _gap_by_streams(
    gaps: Sequence[GapSample], model: StepTimeModel, num_replicas: int
) -> dict[str, dict[str, float]]:
    """Per stream count: the median of the rounds' median gaps, their min and max, and the
    model's decode step."""
    out = {}
    for n in sorted({g.num_streams for g in gaps}):
        mine = [g for g in gaps if g.num_streams == n]
        out[str(n)] = {
            "median_s": statistics.median(g.gap_s for g in mine),
            "min_s": min(g.gap_s for g in mine),
            "max_s": max(g.gap_s for g in mine),
            "model_step_s": model.step_time_s(mine[0].decode_shape(num_replicas)),
        }
    return out
