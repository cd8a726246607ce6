"""How much traffic one replica sustains within the SLOs: load points and the search.

A load point simulates a small fleet (`FleetSpec.num_replicas`, the same policy and router)
at a per-replica request rate and reads the SLO statistics from the bench summary of the
requests that started in the steady window (after the warm-up, before the drain). The search
doubles the rate until the SLOs fail, then bisects; the largest rate that met them is the
replica's capacity at these SLOs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from chatfleet.bench.record import RequestRecord
from chatfleet.bench.summary import BenchSummary, parse_targets
from chatfleet.plan.simulator import FleetSpec, simulate
from chatfleet.plan.step_model import StepTimeModel
from chatfleet.plan.traffic import Conversation, TurnShape, conversations, poisson_arrivals

_METRICS = ("ttft", "tpot", "itl", "e2e")
_STATS = ("mean", "p50", "p90", "p99")


@dataclass(frozen=True)
class SloTargets:
    """Latency targets on fleet-wide statistics, e.g. {("ttft", "p99"): 500.0} (ms)."""

    targets: tuple[tuple[str, str, float], ...]

    @staticmethod
    def parse(text: str) -> SloTargets:
        """'ttft_p99:500,tpot_p99:50' -> SloTargets; ValueError naming the bad part."""

        def is_name(name: str) -> bool:
            metric, _, stat = name.partition("_")
            return metric in _METRICS and stat in _STATS

        expected = f"METRIC_STAT:MS, METRIC in {_METRICS}, STAT in {_STATS}"
        out = []
        for name, ms in parse_targets(text, is_name, expected):
            metric, _, stat = name.partition("_")
            out.append((metric, stat, ms))
        return SloTargets(tuple(out))

    def misses(self, summary: BenchSummary) -> list[str]:
        """The targets a summary misses ("ttft_p99 812 > 500"); a failed request misses all."""
        if summary.num_failed:
            return [f"{summary.num_failed} requests failed"]
        missed = []
        for metric, stat, ms in self.targets:
            value = getattr(getattr(summary, f"{metric}_ms"), stat)
            if value is not None and value > ms:
                missed.append(f"{metric}_{stat} {value:.0f} > {ms:g} ms")
        return missed

    def __str__(self) -> str:
        return ",".join(f"{m}_{s}:{ms:g}" for m, s, ms in self.targets)


@dataclass(frozen=True)
class Scenario:
    """Everything a load point needs besides the rate."""

    lengths: list[tuple[TurnShape, ...]]  # conversations' turn lengths, cycled
    fleet: FleetSpec
    step_model: StepTimeModel
    slo: SloTargets
    num_requests: int = 2000  # simulated turns per load point, at least
    think_time_s: float = 0.0
    warmup_fraction: float = 0.1  # requests started in the first part are left out
    seed: int = 0
    # Arrivals span at least this long, so an overloaded fleet has time to build a queue (a
    # short burst of finite requests would drain and look fine at any rate).
    min_duration_s: float = 60.0
    shared_prefix_tokens: int = 0  # a system prompt every conversation starts with

    def conversations(self, rate_per_replica: float) -> list[Conversation]:
        turns = sum(len(t) for t in self.lengths) / len(self.lengths)
        rate = rate_per_replica * self.fleet.num_replicas / turns  # conversations per second
        num = max(1, round(self.num_requests / turns), math.ceil(rate * self.min_duration_s))
        return conversations(
            self.lengths, poisson_arrivals(num, rate, self.seed), self.think_time_s
        )


@dataclass(frozen=True)
class LoadPoint:
    rate_per_replica: float  # requests per second offered to each replica
    summary: BenchSummary  # of the requests that started in the steady window
    prefix_hit_rate: float
    misses: tuple[str, ...]
    window_s: tuple[float, float] = (0.0, 0.0)  # request starts summarized
    is_steady: bool = True  # False: the run was too short for a full turn mix (see below)

    @property
    def meets_slo(self) -> bool:
        return not self.misses


def steady_window(
    records: list[RequestRecord], last_arrival_s: float, warmup_fraction: float
) -> tuple[float, float, bool]:
    """(first, last request start to summarize, whether that window is steady).

    The fleet is in steady state once every turn of a conversation can be in flight: after
    the median conversation's span from its first to its last turn (and after
    `warmup_fraction` of the arrivals), and until the last conversation arrives (after that
    the fleet only drains; a short run that counted its drain looked better than a long one).
    If the arrivals end before the turn mix is complete, the window after the warm-up
    fraction is returned, flagged not steady.

        arrivals  |-----------------------------------|
        turns     |1    1 2  1 2 3  1 2 3 1 2 3 1 2 3 |2 3  3  (drain)
                  [ warm-up ][      steady window     ]
    """
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    for r in records:
        first[r.session_index] = min(first.get(r.session_index, r.start_s), r.start_s)
        last[r.session_index] = max(last.get(r.session_index, r.start_s), r.start_s)
    spans = sorted(last[k] - first[k] for k in first)
    warmup = max(spans[len(spans) // 2] if spans else 0.0, warmup_fraction * last_arrival_s)
    if warmup < last_arrival_s * (1 - warmup_fraction):
        return warmup, last_arrival_s, True
    return warmup_fraction * last_arrival_s, float("inf"), False


def load_point(scenario: Scenario, rate_per_replica: float) -> LoadPoint:
    from chatfleet.bench.summary import SloParams, summarize

    convs = scenario.conversations(rate_per_replica)
    s = scenario
    result = simulate(convs, s.fleet, s.step_model, s.seed, s.shared_prefix_tokens)
    last_arrival = max(c.arrival_s for c in convs)
    lo, hi, is_steady = steady_window(result.records, last_arrival, scenario.warmup_fraction)
    summary = summarize([r for r in result.records if lo <= r.start_s <= hi], SloParams())
    misses = scenario.slo.misses(summary)
    return LoadPoint(
        rate_per_replica,
        summary,
        result.prefix_hit_rate,
        tuple(misses),
        (lo, min(hi, max((r.start_s for r in result.records), default=0.0))),
        is_steady,
    )


def find_capacity(
    scenario: Scenario,
    start_rate: float = 1.0,
    rel_precision: float = 0.05,
    log: Callable[[str], None] = lambda s: None,
) -> tuple[LoadPoint | None, list[LoadPoint]]:
    """(the best point that met the SLOs or None, every point simulated, by rate)."""
    points: list[LoadPoint] = []

    def probe(rate: float) -> LoadPoint:
        point = load_point(scenario, rate)
        points.append(point)
        verdict = "ok" if point.meets_slo else "; ".join(point.misses)
        if not point.is_steady:
            verdict += " (NOT steady: arrivals end before a full turn mix; lengthen the run)"
        log(f"plan: {rate:.3g} req/s per replica: {verdict}")
        return point

    lo: LoadPoint | None = None
    rate = start_rate
    point = probe(rate)
    while point.meets_slo:  # double until the SLOs fail
        lo, rate = point, rate * 2
        point = probe(rate)
    hi_rate = rate
    if lo is None:  # halve until they hold (or give up: the SLO is out of reach)
        while not point.meets_slo and rate > start_rate / 1024:
            hi_rate, rate = rate, rate / 2
            point = probe(rate)
        if not point.meets_slo:
            return None, sorted(points, key=lambda p: p.rate_per_replica)
        lo = point
    while hi_rate / lo.rate_per_replica - 1 > rel_precision:
        mid = math.sqrt(lo.rate_per_replica * hi_rate)
        point = probe(mid)
        if point.meets_slo:
            lo = point
        else:
            hi_rate = mid
    return lo, sorted(points, key=lambda p: p.rate_per_replica)
