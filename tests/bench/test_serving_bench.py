"""`chatfleet bench` against a real `chatfleet serve`: the saved summary is what the raw
per-request records say, token counts come from the server's usage, errors are recorded."""

from __future__ import annotations

import json

import numpy as np
import pytest

from chatfleet.bench.result import summary_from_result
from chatfleet.entrypoints.cli import main

SMALL = ["--num-prompts", "6", "--concurrency", "2", "--max-tokens", "8", "--no-progress"]


def _bench(server, tmp_path, *args: str) -> dict:
    out = tmp_path / "result.json"
    assert main(["bench", "--base-url", server.base_url, *args, "--output", str(out)]) == 0
    return json.loads(out.read_text())


def _check_against_raw(result: dict) -> None:
    """The summary equals a recomputation, and spot checks agree with plain numpy."""
    summary, raw = result["summary"], result["requests"]
    assert summary == summary_from_result(result)
    ok = [r for r in raw if r["error_type"] is None]
    assert summary["num_requests"] == len(raw) and summary["num_succeeded"] == len(ok)
    ttfts_ms = [r["chunk_times_s"][0] * 1e3 for r in ok]
    assert summary["ttft_ms"]["count"] == len(ttfts_ms)
    if ok:
        for q in (50, 90, 99):
            assert summary["ttft_ms"][f"p{q}"] == pytest.approx(np.percentile(ttfts_ms, q))
        e2es_ms = [r["e2e_s"] * 1e3 for r in ok]
        assert summary["e2e_ms"]["p99"] == pytest.approx(np.percentile(e2es_ms, 99))
    assert summary["itl_ms"]["count"] == sum(len(r["chunk_times_s"]) - 1 for r in ok)
    assert summary["total_output_tokens"] == sum(r["completion_tokens"] for r in ok)
    assert summary["duration_s"] == pytest.approx(max(r["start_s"] + r["e2e_s"] for r in raw))
    for r in ok:
        times = r["chunk_times_s"]
        assert times == sorted(times) and times[-1] <= r["e2e_s"]


@pytest.mark.parametrize("dataset", ["random", "sharegpt"])
def test_bench_summary_is_consistent_with_raw_records(server, tmp_path, dataset):
    result = _bench(server, tmp_path, "--dataset", dataset, "--input-len", "24", *SMALL)
    _check_against_raw(result)
    summary = result["summary"]
    assert summary["num_requests"] == 6 and summary["num_failed"] == 0
    assert summary["errors_by_status"] == {} and summary["token_count_source"] == "usage"
    for r in result["requests"]:
        assert r["status_code"] == 200 and r["token_count_source"] == "usage"
        assert 1 <= r["completion_tokens"] <= r["max_tokens"] <= 8
    assert result["config"]["dataset"] == dataset
    assert result["config"]["served_model"]  # resolved from /v1/models


def test_multi_turn_replays_each_conversation_in_order(server, tmp_path):
    args = ["--dataset", "multi-turn", "--num-prompts", "2", "--num-turns", "2"]
    result = _bench(server, tmp_path, *args, "--concurrency", "2", "--max-tokens", "8")
    _check_against_raw(result)
    raw = result["requests"]
    assert sorted((r["session_index"], r["turn_index"]) for r in raw) == [
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
    ]
    for session in (0, 1):
        first, second = sorted(
            (r for r in raw if r["session_index"] == session), key=lambda r: r["turn_index"]
        )
        # Turn 1 starts after turn 0 ended and carries its question and answer.
        assert second["start_s"] >= first["start_s"] + first["e2e_s"]
        assert second["prompt_tokens"] > first["prompt_tokens"] + first["completion_tokens"]


def test_errors_are_recorded_not_raised(server, tmp_path):
    args = ["--model", "no-such-model", "--dataset", "random", "--input-len", "4"]
    result = _bench(server, tmp_path, *args, "--num-prompts", "3", "--request-rate", "100")
    _check_against_raw(result)
    summary = result["summary"]
    assert summary["num_failed"] == 3 and summary["errors_by_status"] == {"404": 3}
    assert summary["errors_by_type"] == {"model_not_found": 3}
    assert summary["request_throughput"] == 0.0 and summary["ttft_ms"]["p50"] is None


def test_a_free_run_replays_the_constrained_runs_output_lengths(server, tmp_path):
    """json-schema replies end where their schema does; the paired json-prompts run, with
    --lengths-from and --ignore-eos, generates exactly as many tokens per request."""
    args = ["--num-prompts", "6", "--concurrency", "3", "--max-tokens", "96", "--no-progress"]
    constrained = _bench(server, tmp_path, "--dataset", "json-schema", *args)
    source = tmp_path / "constrained.json"
    (tmp_path / "result.json").rename(source)
    free = _bench(
        server,
        tmp_path,
        "--dataset",
        "json-prompts",
        "--ignore-eos",
        "--lengths-from",
        str(source),
        *args,
    )

    def lengths(result: dict) -> dict:
        return {r["session_index"]: r["completion_tokens"] for r in result["requests"]}

    assert all(r["status_code"] == 200 for r in constrained["requests"] + free["requests"])
    assert lengths(free) == lengths(constrained)
    assert len(set(lengths(constrained).values())) > 1  # the schemas end at different lengths
