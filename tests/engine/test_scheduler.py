"""Scheduler without a model: token budgets, chunked prefill, preemption, abort, priority."""

from __future__ import annotations

from chatfleet.config.engine_config import SchedulerConfig
from chatfleet.engine.kv_cache_manager import KVCacheManager
from chatfleet.engine.request import Request, RequestStatus
from chatfleet.engine.scheduler import Scheduler
from chatfleet.sampling_params import SamplingParams
from chatfleet.step import ModelRunnerOutput


def _sched(num_blocks=64, budget=16, max_seqs=8) -> Scheduler:
    kv = KVCacheManager(num_blocks, block_size=4)
    return Scheduler(SchedulerConfig(max_num_seqs=max_seqs, max_num_batched_tokens=budget), kv)


def _run_step(s: Scheduler, token: int = 7):
    out = s.schedule()
    sampled = {x.request.request_id: token for x in out.scheduled if x.samples}
    s.update_from_output(out, ModelRunnerOutput(sampled))
    return out


def test_chunked_prefill_mixes_with_decode():
    s = _sched(budget=16)
    s.add_request(Request("short", [1, 2, 3], SamplingParams(max_tokens=10)))
    s.add_request(Request("long", list(range(40)), SamplingParams(max_tokens=10)))
    first = _run_step(s)
    assert [(x.request.request_id, x.num_new_tokens) for x in first.scheduled] == [
        ("short", 3),
        ("long", 13),
    ]
    second = _run_step(s)
    counts = {x.request.request_id: x.num_new_tokens for x in second.scheduled}
    assert counts == {"short": 1, "long": 15}  # a decode and a prefill chunk in one step
    assert second.num_batched_tokens <= 16


def test_preemption_when_blocks_run_out_then_recovery():
    s = _sched(num_blocks=6, budget=64)
    for i in range(3):
        s.add_request(Request(f"r{i}", list(range(7)), SamplingParams(max_tokens=12)))
    steps = 0
    while s.has_unfinished() and steps < 200:
        _run_step(s)
        s.kv.check_integrity()
        steps += 1
    assert not s.has_unfinished()
    assert s.num_preemptions > 0
    assert s.kv.pool.num_free_blocks == 6


def test_abort_frees_blocks_and_reports_to_runner():
    s = _sched()
    s.add_request(Request("a", list(range(10)), SamplingParams(max_tokens=5)))
    _run_step(s)
    assert s.kv.pool.num_free_blocks < 64
    s.finish_requests(["a"], RequestStatus.FINISHED_ABORTED)
    assert s.kv.pool.num_free_blocks == 64 and s.num_running == 0
    assert "a" in s.schedule().finished_request_ids


def test_priority_orders_admission():
    s = _sched(max_seqs=1)
    s.add_request(Request("low", [1, 2], SamplingParams(max_tokens=1), priority=5))
    s.add_request(Request("high", [3, 4], SamplingParams(max_tokens=1), priority=0))
    out = s.schedule()
    assert [x.request.request_id for x in out.scheduled] == ["high"]


def test_max_tokens_and_stop_token_ids_finish():
    s = _sched()
    s.add_request(Request("len", [1, 2], SamplingParams(max_tokens=2)))
    s.add_request(Request("stop", [1, 2], SamplingParams(max_tokens=9, stop_token_ids=[7])))
    _run_step(s)
    assert "stop" not in s.requests  # token 7 is a stop id
    _run_step(s)
    assert not s.has_unfinished()
