"""The serving overhead around a step model: how the simulator applies it, how it is fitted
and stored, and its measurement on a real server."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from chatfleet.plan.http_calibrate import (
    OVERHEAD_TERMS,
    GapSample,
    OverheadPlan,
    bootstrap_spread,
    fit_overhead,
    measure_serving_overhead,
    overhead_rows,
    prefill_shapes,
)
from chatfleet.plan.overhead import ServingOverhead
from chatfleet.plan.simulator import simulate
from chatfleet.plan.step_model import ConstantStepModel, LinearStepModel
from chatfleet.plan.traffic import conversations, fixed_lengths
from tests.plan.test_simulator import _fleet


def test_step_terms_stretch_every_step():
    """One lone request of 32 prompt tokens and 4 output tokens: a prefill step (32 prefill
    tokens, 1 sampled row) and 3 decode steps (1 sampled row each), each step 10 ms plus
    step_s + sampled_token_s (+ prefill_token_s per prefill token)."""
    convs = conversations(fixed_lengths(1, 32, 4), [0.0])
    overhead = ServingOverhead(
        ingress_s=0.005, step_s=0.001, sampled_token_s=0.002, prefill_token_s=0.0001
    )
    fleet = dataclasses.replace(_fleet(), overhead=overhead)
    (record,) = simulate(convs, fleet, ConstantStepModel(0.01)).records
    prefill = 0.01 + 0.001 + 0.002 + 32 * 0.0001
    decode = 0.01 + 0.001 + 0.002
    assert record.ttft_s == pytest.approx(0.005 + prefill, abs=2e-6)
    assert record.e2e_s == pytest.approx(0.005 + prefill + 3 * decode, abs=2e-6)


def test_negative_terms_never_make_a_step_take_negative_time():
    convs = conversations(fixed_lengths(1, 32, 4), [0.0])
    fleet = dataclasses.replace(_fleet(), overhead=ServingOverhead(step_s=-1.0))
    (record,) = simulate(convs, fleet, ConstantStepModel(0.01)).records
    assert record.e2e_s == 0.0 and record.completion_tokens == 4


def test_fit_recovers_known_terms_from_synthetic_measurements():
    """Measurements made up from a known step model plus known terms (and +-2% noise):
    the residual fit finds the terms again, and the bootstrap brackets them."""
    model = LinearStepModel((0.01, 0.002, 0.001, 5e-6, 1e-6), {}, {})
    truth = ServingOverhead(0.030, 0.0, 0.004, 0.0015, 0.0003)
    rng = np.random.default_rng(0)
    ttfts = []
    for words in (8, 32, 96, 256, 512) * 6:
        tokens = int(words * 1.2) + 24
        shapes = prefill_shapes(tokens, 512)
        exact = truth.ingress_s + sum(model.step_time_s(s) + truth.step_extra_s(s) for s in shapes)
        ttfts.append((words, tokens, exact * rng.uniform(0.98, 1.02)))
    gaps = []
    for streams in (1, 2, 4, 8) * 6:
        sample = GapSample(streams, 100.0, 64, 0.0, 50)
        shape = sample.decode_shape(2)
        exact = model.step_time_s(shape) + truth.step_extra_s(shape)
        gaps.append(dataclasses.replace(sample, gap_s=exact * rng.uniform(0.99, 1.01)))
    x, resid, measured = overhead_rows(model, ttfts, gaps, 512, num_replicas=2)
    coef = fit_overhead(x, resid, measured)
    got = dict(zip(OVERHEAD_TERMS, coef, strict=True))
    assert got["ingress_s"] == pytest.approx(truth.ingress_s, abs=0.01)
    assert got["step_s"] == pytest.approx(truth.step_s, abs=0.001)
    assert got["sampled_token_s"] == pytest.approx(truth.sampled_token_s, abs=0.0005)
    assert got["prefill_token_s"] == pytest.approx(truth.prefill_token_s, abs=0.0001)
    spread = bootstrap_spread(x, resid, measured, len(ttfts), 50)
    assert all(lo <= c <= hi for (lo, hi), c in zip(spread, coef, strict=True))


def test_overhead_round_trips_through_step_model_meta(tmp_path):
    overhead = ServingOverhead(0.02, 0.0, 0.003, 0.001, -0.0002)
    model = LinearStepModel((0.01, 0.0, 0.0, 0.0, 0.0), {"mean": 0.0, "p90": 0.0}, {})
    model = dataclasses.replace(model, meta={"serving_overhead": overhead.to_meta()})
    model.save(tmp_path / "steps.json")
    assert ServingOverhead.from_meta(LinearStepModel.load(tmp_path / "steps.json").meta) == overhead
    assert ServingOverhead.from_meta({}) == ServingOverhead()


def test_measure_serving_overhead_on_a_real_server(server):
    """Against a real `chatfleet serve` and a step model that says steps take no time, every
    step is overhead: a lone stream's gap (step_s + one sampled row) must come out positive.
    No time is asserted beyond that sign."""
    plan = OverheadPlan((8, 64), (1, 2), num_rounds=2, gap_max_tokens=24, num_bootstrap=20)
    overhead, report = measure_serving_overhead(server.base_url, ConstantStepModel(0.0), plan=plan)
    assert report["num_ttft_samples"] == 4 and report["num_gap_samples"] == 4
    assert report["num_replicas_behind"] == 1
    assert set(report["ttft_by_words"]) == {"8", "64"}
    assert overhead.step_s + overhead.sampled_token_s > 0
    for lo, hi in report["terms_p10_p90"].values():
        assert lo <= hi


def test_a_negative_ingress_is_refitted_as_zero():
    """A step model that over-predicts every lone prefill by 20 ms would need a negative
    ingress; the fit keeps the ingress at 0 and moves the difference into the step terms."""
    model = ConstantStepModel(0.030)
    ttfts = [(w, w + 20, 0.010 + 0.0001 * (w + 20)) for w in (8, 32, 96, 256) * 3]
    gaps = [GapSample(n, 50.0, 32, 0.030, 20) for n in (1, 2, 4) * 3]
    x, resid, measured = overhead_rows(model, ttfts, gaps, 512, num_replicas=1)
    assert fit_overhead(x, resid, measured)[0] == 0.0
