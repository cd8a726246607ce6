"""The serving sweep's pooling of repeated runs (benchmarks/serving_sweep.py), on result files
written by the bench's own code from synthetic records."""

from __future__ import annotations

import pytest

from benchmarks.serving_sweep import NO_CACHE, Workload, pooled_summary, repeats_table
from chatfleet.bench.result import build_result, write_result
from tests.bench.test_summary import _record


def test_repeats_pool_as_back_to_back_runs_and_a_failed_seed_is_shown(tmp_path):
    goodput = "ttft:2000,tpot:100"
    runs = [  # two runs of 2 requests each, ending at 1.0 s and at 2.0 s
        [_record(0, 0.1, 0.1, 10), _record(1, 0.3, 0.1, 7, start_s=0.1)],
        [_record(0, 0.5, 0.2, 8, start_s=0.1), _record(1, 0.7, 0.1, 14)],
    ]
    paths = []
    for k, records in enumerate(runs):
        paths.append(tmp_path / f"run{k}.json")
        write_result(paths[-1], build_result({"goodput": goodput}, records))
    pooled = pooled_summary(paths, goodput)
    assert pooled["num_succeeded"] == 4
    # The second run starts where the first ended (1.0 s), so the time is 1.0 + 2.0 s.
    assert pooled["duration_s"] == pytest.approx(3.0)
    assert pooled["output_token_throughput"] == pytest.approx((10 + 7 + 8 + 14) / 3.0)
    assert pooled["ttft_ms"]["mean"] == pytest.approx((100 + 300 + 500 + 700) / 4)

    work = Workload("multi-turn-c4", [], 4, repeats=2)
    ttfts = {"chatfleet": [100.0, 300.0], NO_CACHE: [600.0, 1200.0], "llama.cpp": [50.0, None]}
    summary = {"ttft_ms": {"mean": 200.0}}
    table = repeats_table(
        work, ttfts, {"chatfleet": summary, NO_CACHE: {"ttft_ms": {"mean": 900.0}}}
    )
    assert "| llama.cpp | 50 | - | - |" in table  # its second run failed: no pooled cell
    assert "| no cache / cache | 6.00x | 4.00x | **4.50x** |" in table
