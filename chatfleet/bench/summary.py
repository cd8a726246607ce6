"""Aggregate request records into the benchmark summary: pure functions, no I/O.

Definitions (as in vLLM's serving benchmark):
- TTFT: request sent -> first chunk with content.
- TPOT: (e2e - TTFT) / (completion_tokens - 1), for requests with more than one output token.
- ITL: gaps between consecutive content chunks, pooled over all requests.
- duration: run start -> the last request's end; throughputs divide by it.
- goodput: successful requests per second that meet every SLO given.
Only successful requests enter latencies, token totals and throughputs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from chatfleet.bench.record import RequestRecord

PERCENTILES = (50, 90, 99)
_STATS = ("mean", "p50", "p90", "p99")


@dataclass(frozen=True)
class SloParams:
    """Per-request latency targets in milliseconds; None: no target on that metric."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None

    @property
    def is_empty(self) -> bool:
        return self.ttft_ms is None and self.tpot_ms is None and self.e2e_ms is None


def parse_targets(
    text: str, is_name: Callable[[str], bool], expected: str
) -> list[tuple[str, float]]:
    """'a:500,b:50' -> [("a", 500.0), ("b", 50.0)] (names lower-cased); ValueError naming the
    bad part, with `expected` saying what a part should look like."""
    out = []
    for part in text.split(","):
        name, sep, value = part.strip().partition(":")
        name = name.strip().lower()
        if not sep or not is_name(name):
            raise ValueError(f"bad SLO {part!r}: expected {expected}")
        try:
            ms = float(value)
        except ValueError:
            raise ValueError(f"bad SLO {part!r}: {value!r} is not a number") from None
        if not ms > 0:
            raise ValueError(f"bad SLO {part!r}: the target must be positive")
        out.append((name, ms))
    return out


def parse_slo(text: str | None) -> SloParams:
    """'ttft:500,tpot:50' -> SloParams; ValueError naming the bad part."""
    if not text:
        return SloParams()
    names = {"ttft": "ttft_ms", "tpot": "tpot_ms", "e2e": "e2e_ms", "e2el": "e2e_ms"}
    pairs = parse_targets(text, names.__contains__, "NAME:MS with NAME in ttft, tpot, e2e")
    return SloParams(**{names[name]: ms for name, ms in pairs})


def meets_slo(record: RequestRecord, slo: SloParams) -> bool:
    """True if the request succeeded and meets every target.

    A request without content never meets a TTFT target; one with a single output token has
    no TPOT and so cannot miss a TPOT target.
    """
    if not record.is_success:
        return False
    ttft, tpot = record.ttft_s, record.tpot_s
    if slo.ttft_ms is not None and (ttft is None or ttft * 1e3 > slo.ttft_ms):
        return False
    if slo.tpot_ms is not None and tpot is not None and tpot * 1e3 > slo.tpot_ms:
        return False
    return slo.e2e_ms is None or record.e2e_s * 1e3 <= slo.e2e_ms


@dataclass(frozen=True)
class Distribution:
    """Milliseconds; the statistics are None when there are no values."""

    count: int
    mean: float | None
    p50: float | None
    p90: float | None
    p99: float | None


def distribution(values_s: Sequence[float]) -> Distribution:
    if not values_s:
        return Distribution(0, None, None, None, None)
    ms = np.asarray(values_s, dtype=np.float64) * 1e3
    p50, p90, p99 = (float(v) for v in np.percentile(ms, PERCENTILES))
    return Distribution(len(ms), float(ms.mean()), p50, p90, p99)


def ttfts_s(records: Sequence[RequestRecord]) -> list[float]:
    return [t for r in records if r.is_success and (t := r.ttft_s) is not None]


def tpots_s(records: Sequence[RequestRecord]) -> list[float]:
    return [t for r in records if r.is_success and (t := r.tpot_s) is not None]


def itls_s(records: Sequence[RequestRecord]) -> list[float]:
    return [gap for r in records if r.is_success for gap in r.itls_s]


def e2es_s(records: Sequence[RequestRecord]) -> list[float]:
    return [r.e2e_s for r in records if r.is_success]


@dataclass(frozen=True)
class BenchSummary:
    num_requests: int
    num_succeeded: int
    num_failed: int
    errors_by_status: dict[str, int]  # HTTP status, or "connection" when there was none
    errors_by_type: dict[str, int]
    duration_s: float
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float  # successful requests / s
    output_token_throughput: float
    total_token_throughput: float
    mean_concurrency: float  # sum of all e2e / duration (Little's law)
    goodput: float | None  # None when no SLO was given
    num_good: int | None
    token_count_source: str | None  # "usage", "tokenizer", "mixed"; None if nothing counted
    ttft_ms: Distribution
    tpot_ms: Distribution
    itl_ms: Distribution
    e2e_ms: Distribution


def _per_second(value: float, duration_s: float) -> float:
    return value / duration_s if duration_s > 0 else 0.0


def _token_count_source(ok: Sequence[RequestRecord]) -> str | None:
    sources = {r.token_count_source for r in ok if r.token_count_source is not None}
    return sources.pop() if len(sources) == 1 else ("mixed" if sources else None)


def summarize(records: Sequence[RequestRecord], slo: SloParams) -> BenchSummary:
    ok = [r for r in records if r.is_success]
    failed = [r for r in records if not r.is_success]
    duration_s = max((r.end_s for r in records), default=0.0)
    input_tokens = sum(r.prompt_tokens or 0 for r in ok)
    output_tokens = sum(r.completion_tokens or 0 for r in ok)
    by_status = Counter(
        "connection" if r.status_code is None else str(r.status_code) for r in failed
    )
    num_good = None if slo.is_empty else sum(meets_slo(r, slo) for r in records)
    return BenchSummary(
        num_requests=len(records),
        num_succeeded=len(ok),
        num_failed=len(failed),
        errors_by_status=dict(sorted(by_status.items())),
        errors_by_type=dict(sorted(Counter(str(r.error_type) for r in failed).items())),
        duration_s=duration_s,
        total_input_tokens=input_tokens,
        total_output_tokens=output_tokens,
        request_throughput=_per_second(len(ok), duration_s),
        output_token_throughput=_per_second(output_tokens, duration_s),
        total_token_throughput=_per_second(input_tokens + output_tokens, duration_s),
        mean_concurrency=_per_second(sum(r.e2e_s for r in records), duration_s),
        goodput=None if num_good is None else _per_second(num_good, duration_s),
        num_good=num_good,
        token_count_source=_token_count_source(ok),
        ttft_ms=distribution(ttfts_s(records)),
        tpot_ms=distribution(tpots_s(records)),
        itl_ms=distribution(itls_s(records)),
        e2e_ms=distribution(e2es_s(records)),
    )


def format_summary(summary: dict[str, Any]) -> str:
    """A short table for the terminal, from a summary's JSON form (as a result file holds)."""
    s = summary
    lines = [
        f"requests: {s['num_succeeded']} ok, {s['num_failed']} failed in {s['duration_s']:.2f} s",
        f"request throughput: {s['request_throughput']:.2f} req/s",
        f"output token throughput: {s['output_token_throughput']:.1f} tok/s "
        f"(total {s['total_token_throughput']:.1f} tok/s)",
    ]
    if s["token_count_source"] is not None:
        lines.append(f"token counts from: {s['token_count_source']}")
    if s["goodput"] is not None:
        lines.append(f"goodput: {s['goodput']:.2f} req/s ({s['num_good']} met every SLO)")
    if s["errors_by_type"]:
        lines.append(f"errors: {s['errors_by_type']}")
    lines.append(f"{'ms':<6}" + "".join(f"{h:>10}" for h in _STATS))
    for name in ("ttft", "tpot", "itl", "e2e"):
        dist = s[f"{name}_ms"]
        cells = ("-" if dist[k] is None else f"{dist[k]:.1f}" for k in _STATS)
        lines.append(f"{name:<6}" + "".join(f"{c:>10}" for c in cells))
    return "\n".join(lines)
