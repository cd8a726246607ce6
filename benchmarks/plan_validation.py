"""Does the fleet simulator predict a real fleet? `chatfleet plan`'s validation.

1. Calibrate the step-time model on this machine: `chatfleet plan calibrate` times real engine
   steps in process, on one thread (what each replica gets).
2. Start a real fleet, `chatfleet up --replicas 2` (one thread per replica, router in front),
   and measure the serving overhead around the step model through the router
   (`plan calibrate --base-url ROUTER --step-model steps.json`: lone requests' TTFT and the
   inter-token gaps of 1-8 concurrent streams, less the model's times; see overhead.py).
   Nothing of the workload below is used for calibration. `--overhead none` skips this and
   simulates with the in-process model alone.
3. Overload run: `chatfleet bench` (ShareGPT, Poisson arrivals far above capacity): the
   measured saturation throughput.
4. Runs at fractions of that rate (Poisson, `--request-rate`), each with its own seed, each
   on a freshly started fleet (cold prefix caches, as the simulated fleet's).
5. For every run, the simulator replays the same workload: the same arrival times (the bench's
   own generator and seed), each request's prompt tokens (the bench's workload rebuilt and
   templated) and output length from the run's records,
   two replicas with the replicas' scheduler settings, the same routing policy. Predicted
   and measured mean / p90 TTFT and TPOT and throughput are compared.
6. The replicas write step traces (`serve --step-trace`). Per run, the steps they ran are set
   beside the simulated ones (how many, how long, how much prefill and decode per step) and
   the step model is scored on the real steps: a miss is then either the step times (the
   model on the same steps) or the batches (other steps).
7. A second step model, "trace", is fitted on the steps the fleet served in calibration runs
   before the validation runs (other seeds: other prompts and arrivals; overload, then
   `--calibration-fractions` of its throughput), as `plan calibrate --trace` does. It sees
   what the in-process grid cannot: on this 2-core machine a replica's steps share the cores
   with the other replica, the router and the load generator (a lone server's steps match
   the grid's), and the machine's speed drifts between the grid's timing and the runs.
   Every run is simulated with both models.
8. `--paired-calibration` adds a third, "paired": before each validation run, a calibration
   run at the same request rate (another seed) on a fresh fleet, and the step model fitted on
   its steps alone. It follows what one calibration minutes earlier cannot: the operating
   point's own mix of interference, and the machine's drift (the same kind of step here moves
   5-10% between runs ten minutes apart).

    .venv/bin/python benchmarks/plan_validation.py --output docs/results/plan_validation.json

Hold the CPU lock meanwhile: nothing else may run on the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gzip
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from local_fleet import BIN, start_up

from chatfleet.bench.result import load_result, records_from_result
from chatfleet.config.engine_config import SchedulerConfig
from chatfleet.config.router_config import PolicyConfig, RouterConfig
from chatfleet.engine.step_trace import read_trace
from chatfleet.plan.overhead import ServingOverhead
from chatfleet.plan.sim_replica import ReplicaSpec
from chatfleet.plan.simulator import FleetSpec, simulate
from chatfleet.plan.step_mix import StepMix, model_error, model_error_by_class
from chatfleet.plan.step_model import LinearStepModel, StepSample, continues, trace_samples
from chatfleet.plan.traffic import conversations, poisson_arrivals, prompts_from_bench

KV_BLOCK_BYTES = 16 * 2 * 30 * 3 * 64 * 2  # SmolLM2-135M: 30 layers, 3 KV heads x 64, fp16


def run_bench(url: str, args: argparse.Namespace, rate: float, seed: int, out: Path) -> dict:
    cmd = [str(BIN / "chatfleet"), "bench", "--base-url", url, "--dataset", "sharegpt"]
    cmd += ["--num-prompts", str(args.num_prompts), "--max-tokens", str(args.max_tokens)]
    cmd += ["--request-rate", str(rate), "--seed", str(seed), "--ignore-eos", "--no-progress"]
    cmd += ["--output", str(out)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return load_result(out)


@functools.cache
def tokenizer():
    from chatfleet.modelfile.tokenizer import Tokenizer

    return Tokenizer.from_model_path(None)


def shared_prefix_tokens() -> int:
    """Tokens every chat prompt starts with (the template's system prompt), from the tokenizer."""
    tok = tokenizer()
    a = tok.apply_chat_template([{"role": "user", "content": "alpha"}])
    b = tok.apply_chat_template([{"role": "user", "content": "omega"}])
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def simulate_run(result: dict, args: argparse.Namespace, model: LinearStepModel) -> dict:
    """The simulator on the run's workload: same arrivals, same lengths, same fleet; the
    serving overhead measured with the step model unless --overhead none."""
    config = result["config"]
    records = records_from_result(result)
    # The real prompts' tokens, so shared prefixes hit the simulated caches as the real ones.
    lengths = prompts_from_bench(config, records, tokenizer)
    arrivals = poisson_arrivals(len(lengths), config["request_rate"], config["seed"])
    scheduler = SchedulerConfig(args.max_num_seqs, args.max_num_batched_tokens, 8192)
    num_blocks = args.kv_budget_mib * (1 << 20) // KV_BLOCK_BYTES
    fleet = FleetSpec(
        2,
        ReplicaSpec(scheduler, num_blocks),
        RouterConfig(policy=PolicyConfig(name=args.policy)),
        ServingOverhead.from_meta(model.meta) if args.overhead == "measured" else ServingOverhead(),
    )
    sim = simulate(conversations(lengths, arrivals), fleet, model, config["seed"], args.prefix)
    # Every request, as the bench summarizes its run.
    return {"summary": sim.summary(), "hit_rate": sim.prefix_hit_rate, "steps": sim.steps}


def traced_steps(trace_dir: Path, start: float, end: float) -> tuple[list[StepSample], dict]:
    """The steps every replica ran between two time.monotonic() readings, timed by their
    cycles (`trace_samples`); the engine loop's turn between a step and the next one that
    carries on its work (median, and as a share of the time stepping), and the share of the
    time from a replica's first step to its last that it spent stepping (how close to
    saturation the run was)."""
    samples, turns, busy, span = [], [], 0.0, 0.0
    for path in sorted(trace_dir.glob("steps-*.jsonl*")):  # gzipped in a results directory
        every = read_trace(str(path))
        rows = [r for r in every if start <= r["t"] <= end]
        if not rows:
            continue
        samples += trace_samples(every, start, end)
        turns += [
            b["t"] - a["t"] - a["s"] for a, b in zip(rows, rows[1:], strict=False) if continues(a)
        ]
        busy += sum(r["s"] for r in rows)
        span += rows[-1]["t"] + rows[-1]["s"] - rows[0]["t"]
    turns.sort()
    loop = {"median_gap_ms": turns[len(turns) // 2] * 1e3 if turns else 0.0}
    loop["loop_turn_share"] = sum(turns) / busy if busy else 0.0
    return samples, loop | {"busy_share": busy / span if span else 0.0}


def trace_calibration(url: str, args: argparse.Namespace, out_dir: Path, trace_dir: Path):
    """The step model fitted on the steps the fleet ran in calibration runs, seeds apart from
    every validation run's: overload, then --calibration-fractions of its throughput."""
    rates = [args.overload_rate]
    seeds = [args.seed + 1000 + k for k in range(1 + len(args.calibration_fractions.split(",")))]
    windows = []
    for k, seed in enumerate(seeds):
        begin = time.monotonic()
        result = run_bench(url, args, rates[k], seed, out_dir / f"calibration-{k}.json")
        windows.append((begin, time.monotonic()))
        if k == 0:
            saturation = result["summary"]["request_throughput"]
            fractions = args.calibration_fractions.split(",")
            rates += [round(float(f) * saturation, 3) for f in fractions]
    meta = {"calibration_rates": rates, "calibration_seeds": seeds}
    model = fit_on_traces(trace_dir, windows, meta)
    model.save(out_dir / "steps_trace.json")
    return model


def fit_on_traces(trace_dir: Path, windows: list, meta: dict) -> LinearStepModel:
    """The step model fitted, as `plan calibrate --trace` does, on the steps the replicas
    ran within the calibration runs' time windows."""
    samples = [s for begin, end in windows for s in traced_steps(trace_dir, begin, end)[0]]
    return LinearStepModel.fit_served(samples, meta | {"calibration_windows": windows})


def predict(result: dict, args: argparse.Namespace, model, measured: list | None) -> dict:
    """One model's prediction of a run, and (with the run's traced steps) its steps."""
    sim = simulate_run(result, args, model)
    out = {"hit_rate_predicted": sim["hit_rate"], **compare(result["summary"], sim["summary"])}
    out["steps_simulated"] = sim["steps"].summary()
    if measured is not None:
        out["model_on_measured_steps"] = model_error(model, measured)
        out["model_on_measured_by_class"] = model_error_by_class(model, measured)
    return out


def rescaled(model: LinearStepModel, measured: list[StepSample]) -> LinearStepModel:
    """`model` with every coefficient scaled so that its time on the run's own real steps is
    their measured time: a check of the simulator alone (queueing, batching, routing) with
    the step times right on average, whatever the machine's speed did meanwhile."""
    scale = sum(s.seconds for s in measured) / sum(model.step_time_s(s.shape) for s in measured)
    coefficients = tuple(c * scale for c in model.coefficients)
    return dataclasses.replace(
        model, coefficients=coefficients, meta=model.meta | {"scaled_to_run": scale}
    )


def predict_all(result: dict, args: argparse.Namespace, models: dict, measured: list | None):
    """Every model's prediction of a run; with its traced steps also the trace model (else
    the grid's) rescaled to them ("rescaled", see `rescaled`)."""
    out = {name: predict(result, args, model, measured) for name, model in models.items()}
    if measured:
        base = models.get("trace", models["grid"])
        out["rescaled"] = predict(result, args, rescaled(base, measured), measured)
    return out


def compare(measured: dict, predicted) -> dict:
    """Predicted vs measured: mean and p90 TTFT and TPOT, output-token and request throughput."""
    rows = {}
    for metric in ("ttft_ms", "tpot_ms"):
        for stat in ("mean", "p90"):
            m, p = measured[metric][stat], getattr(getattr(predicted, metric), stat)
            rows[f"{metric[:-3]}_{stat}_ms"] = _pair(m, p)
    for name in ("output_token_throughput", "request_throughput"):
        rows[name] = _pair(measured[name], getattr(predicted, name))
    return rows


def _pair(measured: float, predicted: float) -> dict:
    return {"measured": measured, "predicted": predicted, "error": predicted / measured - 1}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--output", default="docs/results/plan_validation.json")
    p.add_argument("--num-prompts", type=int, default=120, help="requests per run")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--max-num-seqs", type=int, default=32)
    p.add_argument("--max-num-batched-tokens", type=int, default=512)
    p.add_argument("--kv-budget-mib", type=int, default=1024)
    p.add_argument("--policy", default="cache_aware")
    p.add_argument("--fractions", default="0.3,0.5,0.7,0.85", help="of the saturation rate")
    p.add_argument("--overload-rate", type=float, default=40.0, help="req/s, far past capacity")
    p.add_argument("--steps", default=None, help="reuse a steps.json instead of calibrating")
    p.add_argument("--seed", type=int, default=100)
    p.add_argument("--port", type=int, default=None, help="the router's; replicas after it")
    p.add_argument("--overhead", choices=["measured", "none"], default="measured")
    p.add_argument(
        "--no-trace-calibration", action="store_true", help="the in-process grid model only"
    )
    p.add_argument(
        "--calibration-fractions",
        default="0.5",
        help="trace calibration: runs at these fractions of its own overload run's throughput",
    )
    p.add_argument(
        "--paired-calibration",
        action="store_true",
        help="before each validation run, a calibration run at its rate: the 'paired' model",
    )
    p.add_argument("--resimulate", default=None, help="no fleet: simulate a past run's DIR again")
    p.add_argument(
        "--refit-trace",
        action="store_true",
        help="with --resimulate: fit the trace model again on the calibration runs' traces",
    )
    args = p.parse_args()
    output = Path(args.output)
    if args.resimulate:
        return resimulate(Path(args.resimulate), args, output)
    out_dir = output.with_suffix("")
    out_dir.mkdir(parents=True, exist_ok=True)
    log_dir = Path(tempfile.mkdtemp(prefix="plan_validation-"))
    print(f"logs in {log_dir}", flush=True)
    steps = out_dir / "steps.json"
    started = time.monotonic()
    if args.steps is None:
        cmd = [str(BIN / "chatfleet"), "plan", "calibrate", "--num-threads", "1"]
        cmd += ["--max-num-batched-tokens", str(args.max_num_batched_tokens)]
        subprocess.run([*cmd, "--output", str(steps)], check=True)
    else:
        steps.write_text(Path(args.steps).read_text())
    args.prefix = shared_prefix_tokens()
    replica_args = f"--kv-cache-memory {args.kv_budget_mib}MiB --max-num-seqs {args.max_num_seqs}"
    replica_args += f" --max-num-batched-tokens {args.max_num_batched_tokens}"
    replica_args += f" --step-trace {log_dir}/steps-{{pid}}.jsonl"
    proc, url = start_up(2, args.policy, replica_args, log_dir / "up.log", port=args.port)
    runs = []
    try:
        if args.overhead == "measured":  # else the in-process model alone (keeps minutes)
            cmd = [str(BIN / "chatfleet"), "plan", "calibrate", "--base-url", url]
            cmd += ["--step-model", str(steps), "--output", str(steps)]
            cmd += ["--max-num-batched-tokens", str(args.max_num_batched_tokens)]
            subprocess.run(cmd, check=True)
        models = {"grid": LinearStepModel.load(steps)}
        if not args.no_trace_calibration:
            models["trace"] = trace_calibration(url, args, out_dir, log_dir)
        plan = [("overload", args.overload_rate)]
        for k, (label, rate) in enumerate(plan):
            run_models = dict(models)
            if args.paired_calibration:
                proc, url = restart(proc, args, replica_args, log_dir / f"up-paired-{k}.log")
                begin = time.monotonic()
                seed = args.seed + 2000 + k
                run_bench(url, args, rate, seed, out_dir / f"paired-{label}.json")
                meta = {"calibration_rates": [rate], "calibration_seeds": [seed]}
                paired = fit_on_traces(log_dir, [(begin, time.monotonic())], meta)
                paired.save(out_dir / f"steps_paired-{label}.json")
                run_models["paired"] = paired
            # A fresh fleet per run: the simulated one starts with empty prefix caches, and
            # real ones warm from earlier runs served 7-13 of a run's 120 ShareGPT prompts
            # from cache (seeds differ, the dataset repeats; session 7, run C).
            proc, url = restart(proc, args, replica_args, log_dir / f"up-{k}.log")
            begin = time.monotonic()
            result = run_bench(url, args, rate, args.seed + k, out_dir / f"bench-{label}.json")
            end = time.monotonic()
            measured, loop = traced_steps(log_dir, begin, end)
            # The window cuts this run out of the traces (benchmarks/step_trace_report.py).
            row: dict = {"label": label, "rate": rate, "trace_window": [begin, end]}
            row["steps_measured"] = StepMix.of(measured).summary() | loop
            row.update(predict_all(result, args, run_models, measured))
            runs.append(row)
            _print(row)
            if label == "overload":
                saturation = result["summary"]["request_throughput"]
                for f in args.fractions.split(","):
                    plan.append((f"{float(f):.2f}", round(float(f) * saturation, 3)))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
        for trace in log_dir.glob("steps-*.jsonl"):  # kept with the results, gzipped
            (out_dir / f"{trace.name}.gz").write_bytes(gzip.compress(trace.read_bytes()))
    config = {k: v for k, v in vars(args).items()}
    config["wall_s"] = round(time.monotonic() - started)
    described = {name: model.describe() for name, model in models.items()}
    data = {"config": config, "step_models": described, "runs": runs}
    output.write_text(json.dumps(data, indent=1) + "\n")
    print(output)
    return 0


def restart(proc: subprocess.Popen, args: argparse.Namespace, replica_args: str, log: Path):
    """The fleet stopped and started again: empty prefix caches."""
    proc.send_signal(signal.SIGTERM)
    proc.wait(120)
    return start_up(2, args.policy, replica_args, log, port=args.port)


def resimulate(run_dir: Path, args: argparse.Namespace, output: Path) -> int:
    """The simulator again on a past run's bench results and step model (e.g. without the
    serving overhead); writes --output like a full run."""
    models = {"grid": LinearStepModel.load(run_dir / "steps.json")}
    if (run_dir / "steps_trace.json").exists():
        models["trace"] = LinearStepModel.load(run_dir / "steps_trace.json")
    args.prefix = shared_prefix_tokens()
    # The run's own output: each run's window in the traces kept beside its results.
    past = run_dir.with_suffix(".json")
    windows = {}
    if past.exists():
        past_runs = json.loads(past.read_text())["runs"]
        windows = {r["label"]: r["trace_window"] for r in past_runs if "trace_window" in r}
    if args.refit_trace and "trace" in models:
        # The calibration runs' windows; runs before session 8 did not store them, and
        # calibrated before their first validation run.
        meta = models["trace"].meta
        keep: dict[str, Any] = {
            k: meta[k] for k in ("calibration_rates", "calibration_seeds") if k in meta
        }
        calibration = meta.get("calibration_windows")
        if not calibration:
            # Everything before the first validation run: with --overhead measured that
            # includes the overhead calibration's requests too.
            calibration = [(float("-inf"), min(w[0] for w in windows.values()))]
            keep["calibration_windows_guessed"] = True
        models["trace"] = fit_on_traces(run_dir, calibration, keep | {"refit": True})
    runs = []
    for label in ["overload", *(f"{float(f):.2f}" for f in args.fractions.split(","))]:
        result = load_result(run_dir / f"bench-{label}.json")
        row: dict = {"label": label, "rate": result["config"]["request_rate"]}
        measured = None
        if label in windows:
            measured, loop = traced_steps(run_dir, *windows[label])
            row["trace_window"] = windows[label]
            row["steps_measured"] = StepMix.of(measured).summary() | loop
        run_models = dict(models)
        if (run_dir / f"steps_paired-{label}.json").exists():
            run_models["paired"] = LinearStepModel.load(run_dir / f"steps_paired-{label}.json")
        row.update(predict_all(result, args, run_models, measured))
        runs.append(row)
        _print(row)
    described = {name: model.describe() for name, model in models.items()}
    data = {"config": vars(args), "step_models": described, "runs": runs}
    output.write_text(json.dumps(data, indent=1) + "\n")
    return 0


def _print(row: dict) -> None:
    m = row.get("steps_measured")
    for name in ("grid", "trace", "paired", "rescaled"):
        if name not in row:
            continue
        pred = row[name]
        cells = [f"{row['label']:>8} {row['rate']:6.2f} req/s {name:>8}"]
        for metric in ("ttft_mean_ms", "ttft_p90_ms", "tpot_mean_ms", "tpot_p90_ms"):
            r = pred[metric]
            cells.append(f"{metric} {r['measured']:.0f}/{r['predicted']:.0f} ({r['error']:+.0%})")
        r = pred["request_throughput"]
        cells.append(f"req/s {r['measured']:.2f}/{r['predicted']:.2f} ({r['error']:+.0%})")
        print("  ".join(cells), flush=True)
        if m is not None:  # real / simulated steps, and the model on the real steps
            s, e = pred["steps_simulated"], pred["model_on_measured_steps"]
            cells = [f"{'':>8} busy {m['busy_share']:.0%} steps {m['num_steps']}/{s['num_steps']}"]
            for key in ("mean_step_ms", "decode_rows_per_step", "prefill_step_share"):
                cells.append(f"{key} {m[key]:.2f}/{s[key]:.2f}")
            if e["num_steps"]:
                cells.append(f"model on real steps {e['total']:+.1%} (|err| {e['mean_abs']:.0%})")
            print("  ".join(cells), flush=True)


if __name__ == "__main__":
    sys.exit(main())
