"""Summary arithmetic on synthetic records: goodput, SLO parsing, percentiles, round trip."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from chatfleet.bench.record import RequestRecord
from chatfleet.bench.result import build_result, summary_from_result
from chatfleet.bench.summary import SloParams, meets_slo, parse_slo, summarize


def _record(
    index: int, ttft_s: float, step_s: float, num_tokens: int, start_s: float = 0.0, **kw
) -> RequestRecord:
    """A success whose chunks arrive at ttft, ttft + step, ... (one token per chunk)."""
    chunks = tuple(ttft_s + k * step_s for k in range(num_tokens))
    return RequestRecord(
        session_index=index,
        turn_index=0,
        start_s=start_s,
        e2e_s=chunks[-1] if chunks else ttft_s,
        chunk_times_s=chunks,
        max_tokens=num_tokens,
        status_code=200,
        prompt_tokens=10,
        completion_tokens=num_tokens,
        token_count_source="usage",
        **kw,
    )


def test_goodput_counts_only_requests_meeting_every_slo():
    slo = SloParams(ttft_ms=100, tpot_ms=20)
    good = _record(0, ttft_s=0.05, step_s=0.01, num_tokens=5)
    slow_first = _record(1, ttft_s=0.2, step_s=0.01, num_tokens=5)
    slow_decode = _record(2, ttft_s=0.05, step_s=0.05, num_tokens=5)
    one_token = _record(3, ttft_s=0.05, step_s=0.0, num_tokens=1)  # no TPOT: cannot miss it
    failed = dataclasses.replace(good, session_index=4, status_code=503, error_type="overloaded")
    mid_stream = dataclasses.replace(good, session_index=5, error_type="request_timeout")
    records = [good, slow_first, slow_decode, one_token, failed, mid_stream]
    assert [meets_slo(r, slo) for r in records] == [True, False, False, True, False, False]

    summary = summarize(records, slo)
    assert summary.num_good == 2
    assert summary.goodput == pytest.approx(2 / summary.duration_s)
    assert summary.num_failed == 2
    assert summary.errors_by_status == {"200": 1, "503": 1}
    assert summary.errors_by_type == {"overloaded": 1, "request_timeout": 1}
    # Failed requests never count towards latencies or tokens.
    assert summary.ttft_ms.count == 4 and summary.total_output_tokens == 16
    assert summarize(records, SloParams()).goodput is None


def test_parse_slo():
    assert parse_slo("ttft:500,tpot:50") == SloParams(ttft_ms=500, tpot_ms=50)
    assert parse_slo("e2e:2000") == SloParams(e2e_ms=2000)
    assert parse_slo(None).is_empty
    for bad in ("ttft", "itl:5", "ttft:abc", "tpot:-1"):
        with pytest.raises(ValueError):
            parse_slo(bad)


def test_summary_matches_numpy_and_survives_the_json_form():
    records = [
        _record(i, ttft_s=0.01 * (i + 1), step_s=0.002 * (i + 1), num_tokens=4, start_s=0.1 * i)
        for i in range(10)
    ]
    summary = summarize(records, SloParams(ttft_ms=50))
    ttfts_ms = [r.chunk_times_s[0] * 1e3 for r in records]
    assert summary.ttft_ms.p90 == pytest.approx(np.percentile(ttfts_ms, 90))
    assert summary.tpot_ms.mean == pytest.approx(np.mean([2.0 * (i + 1) for i in range(10)]))
    assert summary.itl_ms.count == 30
    assert summary.duration_s == pytest.approx(max(r.start_s + r.e2e_s for r in records))
    assert summary.num_good == 5

    result = build_result({"goodput": "ttft:50"}, records)
    assert result["summary"] == dataclasses.asdict(summary)
    assert summary_from_result(result) == result["summary"]
