"""`chatfleet plan` end to end on a small simulated fleet, and a small real calibration."""

from __future__ import annotations

import gzip
import json
import os
import random
import time
from pathlib import Path

from chatfleet.config.engine_config import CacheConfig, EngineConfig, SchedulerConfig
from chatfleet.engine.llm_engine import LLMEngine
from chatfleet.engine.step_trace import read_trace
from chatfleet.entrypoints.cli import main
from chatfleet.plan.calibrate import CalibrationGrid, calibrate_in_process
from chatfleet.plan.step_mix import model_error, model_error_by_class
from chatfleet.plan.step_model import LinearStepModel, StepShape, load_samples, samples_from_trace
from chatfleet.sampling_params import SamplingParams


def test_plan_prints_fleet_cost_and_assumptions(tmp_path, capsys):
    report, out_json = tmp_path / "plan.md", tmp_path / "plan.json"
    # An L4 serves a few requests per second: small simulations, so the test is quick.
    args = ["plan", "--users", "100k", "--messages-per-user-day", "5", "--peak-to-mean", "3"]
    args += ["--slo", "ttft_p99:2000,tpot_p99:150", "--model-shape", "llama-8b"]
    args += ["--accelerator", "l4", "--lengths", "fixed:300,40", "--turns", "2"]
    args += ["--sim-requests", "100", "--sim-duration", "10", "--think-time", "2"]
    args += ["--start-rate", "2", "--report", str(report), "--json", str(out_json)]
    assert main(args) == 0
    out = capsys.readouterr().out
    for text in ("replicas", "accelerators", "tokens/s", "KV cache per replica", "cost per day"):
        assert text in out
    assert "cost per million tokens" in out and "never simulated" in out
    plan = json.loads(out_json.read_text())
    # 100k users x 5 / 86400 x 3 = 17.4 req/s at peak.
    assert abs(plan["plan"]["peak_rate"] - 1e5 * 5 / 86400 * 3) < 1e-6
    replicas = plan["plan"]["replicas"]
    assert replicas * plan["plan"]["capacity_per_replica"] >= plan["plan"]["peak_rate"]
    assert plan["cost_per_day"] == replicas * plan["plan"]["price_per_hour"] * 24
    # The default answer is a converged one: the simulated arrivals doubled until the fleet
    # size settled, each search longer than the one before.
    convergence = plan["convergence"]
    steps = convergence["steps"]
    assert convergence["converged"] and len(steps) >= 2
    assert [s["sim_duration_s"] for s in steps] == [10 * 2**k for k in range(len(steps))]
    assert steps[-1]["replicas"] == replicas
    assert abs(steps[-1]["replicas"] - steps[-2]["replicas"]) <= 0.03 * steps[-2]["replicas"]
    assert plan["is_steady"] and "converged: the fleet changed by" in out
    text = report.read_text()
    assert "round_robin" in text and "cache_aware" in text and "knee.png" in text
    assert (tmp_path / "plan_knee.png").stat().st_size > 1000


def test_plan_says_when_it_did_not_converge(tmp_path, capsys):
    out_json = tmp_path / "plan.json"
    args = ["plan", "--users", "100k", "--lengths", "fixed:300,40", "--turns", "2"]
    args += ["--accelerator", "l4", "--slo", "ttft_p99:2000,tpot_p99:150", "--start-rate", "2"]
    args += ["--sim-requests", "60", "--sim-duration", "5", "--max-sim-duration", "5"]
    args += ["--json", str(out_json)]
    assert main(args) == 0
    assert "NOT converged by 5 s of arrivals" in capsys.readouterr().out
    assert not json.loads(out_json.read_text())["convergence"]["converged"]


def test_plan_rejects_bad_arguments(capsys):
    assert main(["plan", "--users", "1M", "--accelerator", "tpu9"]) == 2
    assert "unknown accelerator" in capsys.readouterr().err
    assert main(["plan"]) == 2


def test_calibrate_times_real_engine_steps(tmp_path):
    """A tiny grid on the real default model: the fit is positive and ranks shapes sanely,
    and the timed steps it was fitted on are kept."""
    config = EngineConfig(num_threads=1, cache=CacheConfig(kv_cache_memory_bytes=64 << 20))
    grid = CalibrationGrid((1, 4), (16, 128), (0, 64), num_decode_steps=2, num_warmup_steps=2)
    samples = tmp_path / "steps.samples.jsonl"
    model = calibrate_in_process(config, grid, samples_path=str(samples))
    assert model.meta["num_samples"] >= 10
    assert len(load_samples(samples)) == model.meta["num_samples"]
    assert all(c >= 0 for c in model.coefficients)
    one = model.step_time_s(StepShape(num_decode_seqs=1, decode_context_tokens=64, num_sampled=1))
    prefill = model.step_time_s(StepShape(256, 1, 256 * 128.5, 256, 0, 0, 1))
    assert 0 < one < prefill


def test_calibrate_fits_the_steps_a_server_ran(tmp_path, capsys):
    """An engine's step trace (what `serve --step-trace` writes) holds every token it fed,
    and `plan calibrate --trace` fits the step model on those steps."""
    trace = tmp_path / "steps-{pid}.jsonl"
    config = EngineConfig(
        num_threads=1,
        cache=CacheConfig(kv_cache_memory_bytes=64 << 20),
        scheduler=SchedulerConfig(max_num_batched_tokens=48),
        step_trace=str(trace),
    )
    engine = LLMEngine(config)
    rng = random.Random(0)
    prompts = [[rng.randrange(1000, 40000) for _ in range(n)] for n in (100, 20, 60, 7)]
    for i, prompt in enumerate(prompts):
        engine.add_request(f"r{i}", prompt, SamplingParams(max_tokens=4 + i, ignore_eos=True))
    while engine.has_unfinished_requests():
        engine.step()
        time.sleep(0.002)  # the engine loop's turn between steps (a server's, stretched)
    time.sleep(0.2)  # idle: the next request arrives 200 ms later
    late = [rng.randrange(1000, 40000) for _ in range(30)]
    engine.add_request("late", late, SamplingParams(max_tokens=3, ignore_eos=True))
    while engine.has_unfinished_requests():
        engine.step()
    engine.close()
    prompts.append(late)
    path = str(trace).replace("{pid}", str(os.getpid()))
    rows = read_trace(path)
    samples = samples_from_trace(path)
    assert len(samples) == len(rows) >= 10
    fed = sum(n for row in rows for n, _, _ in row["seqs"])
    # Every prompt token once, then one fed token per sampled token but the last.
    outputs = [4 + i for i in range(len(prompts) - 1)] + [3]
    assert fed == sum(map(len, prompts)) + sum(n - 1 for n in outputs)
    assert sum(s.shape.num_sampled for s in samples) == sum(outputs)
    # A step's sample is its cycle: up to the next step when that one carries on its work
    # (the loop's turn included), its bare duration before the engine went idle.
    idle = [k for k, row in enumerate(rows[:-1]) if not row["more"]]
    assert len(idle) == 1 and rows[idle[0] + 1]["t"] - rows[idle[0]]["t"] > 0.2
    assert not rows[-1]["more"]
    for k, (row, sample) in enumerate(zip(rows, samples, strict=True)):
        if k == idle[0] or k == len(rows) - 1:
            assert sample.seconds == row["s"]
        else:
            assert sample.seconds == rows[k + 1]["t"] - row["t"]
            turn = 0.002 if k < idle[0] else 0.0  # the late request's steps ran back to back
            assert sample.seconds >= row["s"] + turn - 2e-6  # t and s are rounded to 1 us
    assert max(s.shape.num_batched_tokens for s in samples) <= 48
    out = tmp_path / "steps.json"
    assert main(["plan", "calibrate", "--trace", path, "--output", str(out)]) == 0
    model = LinearStepModel.load(out)
    assert model.meta["method"] == "served steps (step trace)" and model.meta["weighted_by_time"]
    assert model.meta["num_samples"] == len(samples)
    assert model_error(model, samples)["num_steps"] == len(samples)
    # Kept gzipped and cut by time, it reads back the same.
    gz = tmp_path / "trace.jsonl.gz"
    gz.write_bytes(gzip.compress(Path(path).read_bytes()))
    assert samples_from_trace(str(gz)) == samples
    assert samples_from_trace(str(gz), since=rows[1]["t"], until=rows[2]["t"]) == samples[1:3]
    by_class = model_error_by_class(model, samples)
    assert sum(c["num_steps"] for c in by_class.values()) == len(samples)
    assert {"decode 1", "prefill <64"} <= set(by_class)  # 48-token chunks; lone decodes at the end
    assert "fit error" in capsys.readouterr().out
