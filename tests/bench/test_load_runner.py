"""Arrival times (pure, seeded) and the tokenizer fallback for token counts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from chatfleet.bench.client import Exchange
from chatfleet.bench.load_runner import arrival_times_s, fill_token_counts
from chatfleet.bench.record import RequestRecord
from chatfleet.bench.workload import BenchRequest


@pytest.mark.parametrize("burstiness", [1.0, 0.5, 4.0])
def test_arrivals_are_seeded_with_mean_gap_one_over_rate(burstiness):
    rate = 8.0
    times = arrival_times_s(20_000, rate, burstiness, seed=3)
    assert times == arrival_times_s(20_000, rate, burstiness, seed=3)
    assert times != arrival_times_s(20_000, rate, burstiness, seed=4)
    gaps = np.diff(times)
    assert times[0] == 0.0 and (gaps >= 0).all()
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.05)
    # Gamma(k, θ) has variance kθ² = 1 / (rate² k): burstier (small k) means more spread.
    assert gaps.var() == pytest.approx(1 / (rate**2 * burstiness), rel=0.1)


def test_infinite_rate_sends_everything_at_once():
    assert arrival_times_s(3, math.inf, 1.0, seed=0) == [0.0, 0.0, 0.0]
    assert arrival_times_s(0, 1.0, 1.0, seed=0) == []


class _WordTokenizer:
    def encode(self, text):
        return text.split()

    def apply_chat_template(self, messages):
        return [w for m in messages for w in ["<turn>", *m["content"].split()]]


def test_token_counts_fall_back_to_the_tokenizer_only_without_usage():
    request = BenchRequest(0, 0, [{"role": "user", "content": "one two three"}], max_tokens=8)
    base = RequestRecord(0, 0, start_s=0.0, e2e_s=1.0, chunk_times_s=(0.5,), max_tokens=8)
    with_usage = RequestRecord(
        1, 0, 0.1, 1.0, (0.5,), 8, 200, None, None, 5, 4, token_count_source="usage"
    )
    failed = RequestRecord(2, 0, 0.2, 1.0, (), 8, 503, "overloaded")
    exchanges = [
        Exchange(request, failed, ""),
        Exchange(request, with_usage, "x"),
        Exchange(request, base, "a b"),
    ]
    records = fill_token_counts(exchanges, _WordTokenizer)
    assert [r.session_index for r in records] == [0, 1, 2]  # sorted by start
    assert (records[0].prompt_tokens, records[0].completion_tokens) == (4, 2)
    assert records[0].token_count_source == "tokenizer"
    assert records[1] == with_usage and records[2] == failed
