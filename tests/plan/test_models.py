"""Step-time models: the shape of a real scheduled step, the measured fit, the roofline."""

from __future__ import annotations

import random

import pytest

from chatfleet.config.engine_config import SchedulerConfig
from chatfleet.engine.kv_cache_manager import KVCacheManager
from chatfleet.engine.request import Request
from chatfleet.engine.scheduler import Scheduler
from chatfleet.plan.hardware import ACCELERATORS, load_model_shape
from chatfleet.plan.roofline import RooflineParams, RooflineStepModel
from chatfleet.plan.step_model import (
    FEATURES,
    LinearStepModel,
    StepSample,
    StepShape,
    load_samples,
    save_samples,
    trace_samples,
)
from chatfleet.sampling_params import SamplingParams


def test_step_shape_of_a_mixed_step():
    """Budget 20: a running decode at 9 tokens of context, then a 30-token prompt chunked."""
    sched = Scheduler(SchedulerConfig(max_num_batched_tokens=20), KVCacheManager(64, 4))
    params = SamplingParams(max_tokens=5, ignore_eos=True)
    a = Request("a", list(range(8)), params)
    sched.add_request(a)
    out = sched.schedule()
    assert StepShape.of(out) == StepShape(8, 1, 8 * (0 + 4.5), 8, 0, 0, 1)
    sched.update_from_output(out, _sampled(out))
    sched.add_request(Request("b", list(range(100, 130)), params))
    shape = StepShape.of(sched.schedule())
    # a decodes its 9th token (context 9); b gets 19 tokens, [0, 19), and does not sample.
    assert shape == StepShape(19, 1, 19 * 10, 19, 1, 9, 1)
    assert shape.num_batched_tokens == 20 and shape.num_seqs == 2


def _sampled(out):
    from chatfleet.step import ModelRunnerOutput

    return ModelRunnerOutput({s.request.request_id: 7 for s in out.scheduled if s.samples})


def test_fit_recovers_known_coefficients(tmp_path):
    truth = (0.01, 2e-4, 5e-4, 1e-6, 2e-7)
    rng = random.Random(0)
    samples = []
    for _ in range(200):
        shape = StepShape(
            num_prefill_tokens=(p := rng.choice([0, 64, 256, 512, 1024])),
            num_prefill_seqs=int(p > 0),
            prefill_attention_pairs=p * (p + 1) / 2,
            prefill_context_tokens=p,
            num_decode_seqs=(d := rng.randint(1, 32)),
            decode_context_tokens=d * rng.randint(10, 2000),
            num_sampled=d + int(p > 0),
        )
        seconds = LinearStepModel(truth, {}, {}).step_time_s(shape) * rng.uniform(0.98, 1.02)
        samples.append(StepSample(shape, seconds))
    model = LinearStepModel.fit(samples, {"method": "test"})
    save_samples(samples, tmp_path / "steps.samples.jsonl")
    refit = LinearStepModel.fit(load_samples(tmp_path / "steps.samples.jsonl"), {})
    assert refit.coefficients == model.coefficients  # the samples round-trip exactly
    for name, got, want in zip(FEATURES, model.coefficients, truth, strict=True):
        assert got == pytest.approx(want, rel=0.15), name
    assert model.fit_error["mean"] < 0.02
    model.save(tmp_path / "steps.json")
    loaded = LinearStepModel.load(tmp_path / "steps.json")
    assert loaded.coefficients == pytest.approx(model.coefficients)
    assert loaded.meta["method"] == "test"


def test_time_weighted_fit_is_right_where_the_time_is():
    """Many short steps and a few long ones that no line through the features fits at once:
    the time-weighted fit (served traces) misses the long steps by less, the plain relative
    fit the short ones."""

    def decode(rows: int) -> StepShape:
        return StepShape(num_decode_seqs=rows, decode_context_tokens=100 * rows, num_sampled=rows)

    samples = [StepSample(decode(1), 0.010)] * 200 + [StepSample(decode(4), 0.016)] * 200
    samples += [StepSample(decode(32), 0.300)] * 4  # 1.2 s of the 7.4 s in all
    plain = LinearStepModel.fit(samples, {})
    timed = LinearStepModel.fit(samples, {}, weight_by_time=True)

    def miss(model: LinearStepModel, rows: int, seconds: float) -> float:
        return abs(model.step_time_s(decode(rows)) / seconds - 1)

    assert miss(timed, 32, 0.300) < miss(plain, 32, 0.300)
    assert miss(plain, 1, 0.010) < miss(timed, 1, 0.010)


def test_roofline_decode_of_llama_8b_on_h100_is_weight_bytes_over_bandwidth():
    """Batch-1 decode is memory bound: ~16 GB of bf16 weights at 0.8 x 3.35 TB/s = 6.0 ms,
    plus the 1.5 ms step overhead; the KV of a short context adds almost nothing."""
    shape = load_model_shape("llama-8b")
    assert shape.num_params == pytest.approx(8.03e9, rel=0.01)
    h100 = ACCELERATORS["h100"]
    model = RooflineStepModel(shape, h100, RooflineParams(overhead_s=1.5e-3))
    step = StepShape(num_decode_seqs=1, decode_context_tokens=100, num_sampled=1)
    expected = shape.weight_bytes / (h100.memory_bandwidth_bytes_s * 0.8) + 1.5e-3
    assert model.step_time_s(step) == pytest.approx(expected, rel=0.01)
    assert 7e-3 < model.step_time_s(step) < 8e-3
    # A 2048-token prefill is compute bound: 2 * 7.5e9 * 2048 flops at 0.6 x 989 TFLOPS.
    prefill = StepShape(2048, 1, 2048 * 1024.5, 2048, 0, 0, 1)
    compute_s = model.flops(prefill) / (h100.peak_flops * 0.6)
    assert model.step_time_s(prefill) == pytest.approx(compute_s + 1.5e-3, rel=0.01)
    assert model.bytes_read(prefill) / (h100.memory_bandwidth_bytes_s * 0.8) < compute_s
    # Tensor parallelism splits the bytes, adds all-reduces; 70B does not fit on one H100.
    tp2 = RooflineStepModel(shape, h100, RooflineParams(tp=2))
    assert tp2.step_time_s(step) < model.step_time_s(step)
    with pytest.raises(ValueError, match="raise --tp"):
        RooflineStepModel(load_model_shape("llama-70b"), h100).kv_cache_bytes()
    assert (
        RooflineStepModel(
            load_model_shape("llama-70b"), h100, RooflineParams(tp=4)
        ).kv_cache_bytes()
        > 100e9
    )


def test_a_step_counts_the_loop_turn_only_when_the_engine_went_straight_on():
    """A trace row's "more" says the engine still had requests after the step: its sample
    then runs to the next step's start; before an idle gap it keeps its bare duration."""
    rows = [
        {"t": 0.000, "s": 0.010, "seqs": [[40, 0, 1]], "more": 1},  # prefill, then a decode
        {"t": 0.012, "s": 0.010, "seqs": [[1, 40, 1]], "more": 1},
        {"t": 2.000, "s": 0.010, "seqs": [[9, 41, 1]], "more": 0},  # idle after this one
        {"t": 2.030, "s": 0.010, "seqs": [[30, 0, 1]], "more": 0},
    ]
    assert [round(s.seconds, 6) for s in trace_samples(rows)] == [0.012, 1.988, 0.010, 0.010]
