"""`chatfleet plan`: fleet size and cost for a user base at given SLOs; `plan calibrate`.

Exit status: 0 with a plan, 1 when no fleet meets the SLOs (or calibration fails), 2 for bad
arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import re
import sys
from pathlib import Path
from typing import Any

from chatfleet.entrypoints.serve import parse_bytes

_COUNT = re.compile(r"^(\d+(?:\.\d+)?)\s*([kKmMbB]?)$")


def parse_count(text: str) -> float:
    """'100M' -> 1e8; k, M, B suffixes."""
    m = _COUNT.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"not a count: {text!r} (e.g. 100M)")
    return float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "b": 1e9}[m.group(2).lower()]


def _slo(text: str) -> Any:
    from chatfleet.plan.search import SloTargets

    try:
        return SloTargets.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_plan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--users", type=parse_count, default=None, help="e.g. 100M")
    p.add_argument("--messages-per-user-day", type=float, default=10.0)
    p.add_argument("--peak-to-mean", type=float, default=2.0, help="peak / mean request rate")
    p.add_argument("--slo", type=_slo, default=None, help="default ttft_p99:2000,tpot_p99:100")
    p.add_argument("--model-shape", default="llama-8b", help="llama-8b, llama-70b, config/GGUF")
    p.add_argument("--accelerator", default="h100", help="h100, h200, a100, l4")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel degree")
    p.add_argument("--policy", default="cache_aware", help="the router's routing policy")
    p.add_argument("--step-model", default=None, help="measured steps.json (plan calibrate)")
    p.add_argument("--price-per-hour", type=float, default=None, help="USD per accelerator")
    p.add_argument("--weight-bytes", type=float, default=2.0, help="bytes per parameter")
    p.add_argument("--kv-cache-memory", type=parse_bytes, default=None, help="KV per replica")
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int, default=2048)
    p.add_argument("--max-model-len", type=int, default=8192)
    p.add_argument("--lengths", default="sharegpt", help="sharegpt | fixed:IN,OUT | bench:FILE")
    p.add_argument("--turns", type=int, default=3, help="turns per conversation")
    p.add_argument("--max-tokens", type=int, default=512, help="cap on answer lengths")
    p.add_argument("--output-scale", type=float, default=1.0, help="answers this many times longer")
    p.add_argument("--think-time", type=float, default=20.0, help="seconds between turns")
    p.add_argument("--system-prompt-tokens", type=int, default=0, help="added, shared by all")
    p.add_argument("--no-prefix-caching", action="store_true")
    p.add_argument("--overhead-ms", type=float, default=None, help="per request, outside steps")
    p.add_argument("--sim-replicas", type=int, default=2, help="replicas simulated")
    p.add_argument("--sim-requests", type=int, default=2000, help="requests per load point")
    p.add_argument("--sim-duration", type=float, default=60.0, help="arrival seconds, at least")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start-rate", type=float, default=1.0, help="req/s per replica, 1st probe")
    p.add_argument("--report", default=None, help="markdown report (plots next to it)")
    p.add_argument("--json", default=None, help="write the plan as JSON")


def add_calibrate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="GGUF or HF dir (default: SmolLM2-135M)")
    p.add_argument("--base-url", default=None, help="measure a running server instead")
    p.add_argument(
        "--step-model", default=None, help="with --base-url: keep this model, fit the overhead"
    )
    p.add_argument(
        "--trace",
        nargs="+",
        default=None,
        metavar="FILE",
        help="fit on the steps a server ran instead (chatfleet serve --step-trace)",
    )
    p.add_argument("--output", required=True, help="steps.json")
    p.add_argument("--weight-format", default="auto", choices=["auto", "fp32", "bf16", "int8"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--num-threads", type=int, default=None)
    p.add_argument("--max-num-batched-tokens", type=int, default=512, help="the server's budget")
    p.add_argument("--grid", choices=["quick", "full"], default="full")


def _lengths(args: argparse.Namespace) -> list:
    from chatfleet.plan import workload

    kind, _, arg = args.lengths.partition(":")
    if kind == "fixed":
        prompt, output = (int(x) for x in arg.split(","))
        return workload.fixed_lengths(args.turns, prompt, output)
    if kind == "bench":
        from chatfleet.bench.result import load_result, records_from_result

        return workload.lengths_from_records(records_from_result(load_result(arg)))
    if kind == "sharegpt":
        from chatfleet.entrypoints.bench import _tokenizer

        num = max(50, args.sim_requests // max(args.turns, 1))
        tok = functools.partial(_tokenizer, None)
        return workload.sharegpt_lengths(num, args.turns, args.max_tokens, args.seed, tok)
    raise ValueError(f"--lengths: expected sharegpt, fixed:IN,OUT or bench:FILE, got {kind!r}")


def _scaled_outputs(lengths: list, scale: float) -> list:
    """Every answer `scale` times as long (a sensitivity knob; applied after --max-tokens)."""
    if scale == 1.0:
        return lengths
    return [
        tuple(
            dataclasses.replace(t, num_output_tokens=max(1, round(t.num_output_tokens * scale)))
            for t in turns
        )
        for turns in lengths
    ]


def _with_system_prompt(lengths: list, num_tokens: int) -> list:
    """Every conversation's first turn starts with the same `num_tokens` more tokens."""
    if not num_tokens:
        return lengths
    return [
        (dataclasses.replace(t[0], num_new_prompt_tokens=t[0].num_new_prompt_tokens + num_tokens),)
        + tuple(t[1:])
        for t in lengths
    ]


def _step_model(args: argparse.Namespace, shape: Any, accel: Any) -> tuple[Any, float, Any]:
    """(step model, KV bytes per replica, ServingOverhead: measured with the step model,
    its per-request part replaced by --overhead-ms when given)."""
    from chatfleet.plan.overhead import ServingOverhead
    from chatfleet.plan.roofline import RooflineParams, RooflineStepModel
    from chatfleet.plan.step_model import LinearStepModel

    if args.step_model:
        model: Any = LinearStepModel.load(args.step_model)
        overhead = ServingOverhead.from_meta(model.meta)
        kv_bytes = args.kv_cache_memory or parse_bytes("2GiB")
    else:
        model = RooflineStepModel(shape, accel, RooflineParams(tp=args.tp))
        overhead = ServingOverhead()
        kv_bytes = args.kv_cache_memory or model.kv_cache_bytes()
    if args.overhead_ms is not None:
        overhead = dataclasses.replace(overhead, ingress_s=args.overhead_ms / 1e3)
    return model, kv_bytes, overhead


def cmd_plan(args: argparse.Namespace) -> int:
    if args.users is None:
        print("error: --users is required (or run `chatfleet plan calibrate`)", file=sys.stderr)
        return 2
    from chatfleet.config import SchedulerConfig
    from chatfleet.plan.capacity import Demand, plan_fleet
    from chatfleet.plan.hardware import get_accelerator, load_model_shape
    from chatfleet.plan.replica import ReplicaSpec
    from chatfleet.plan.report import plan_json, plan_lines, write_report
    from chatfleet.plan.search import Scenario, SloTargets, find_capacity, load_point
    from chatfleet.plan.simulator import FleetSpec
    from chatfleet.router.config import PolicyConfig, RouterConfig

    try:
        accel = get_accelerator(args.accelerator)
        shape = load_model_shape(args.model_shape, args.weight_bytes)
        step_model, kv_bytes, overhead = _step_model(args, shape, accel)
        lengths = _scaled_outputs(_lengths(args), args.output_scale)
        lengths = _with_system_prompt(lengths, args.system_prompt_tokens)
        router = RouterConfig(policy=PolicyConfig(name=args.policy))
        scheduler = SchedulerConfig(
            args.max_num_seqs, args.max_num_batched_tokens, args.max_model_len
        )
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    slo = args.slo or SloTargets.parse("ttft_p99:2000,tpot_p99:100")
    block_size = 16
    num_blocks = int(kv_bytes // (shape.kv_bytes_per_token * block_size))
    fleet = FleetSpec(
        args.sim_replicas,
        ReplicaSpec(scheduler, num_blocks, block_size, not args.no_prefix_caching),
        router,
        overhead,
    )
    scenario = Scenario(
        lengths,
        fleet,
        step_model,
        slo,
        args.sim_requests,
        args.think_time,
        seed=args.seed,
        min_duration_s=args.sim_duration,
        shared_prefix_tokens=args.system_prompt_tokens,
    )
    log = functools.partial(print, file=sys.stderr, flush=True)
    best, points = find_capacity(scenario, args.start_rate, log=log)
    if best is None:
        print(f"no fleet meets {slo}: even a nearly idle replica misses it", file=sys.stderr)
        return 1
    demand = Demand(args.users, args.messages_per_user_day, args.peak_to_mean)
    price = args.price_per_hour if args.price_per_hour is not None else accel.price_per_hour
    tp = 1 if args.step_model else args.tp
    plan = plan_fleet(demand, best, tp, price, kv_bytes, shape.kv_bytes_per_token)
    lines = plan_lines(plan, best, str(slo))
    assumptions = _assumptions(args, scenario, best, step_model, shape, accel)
    print(f"chatfleet plan: {args.users:,.0f} users x {args.messages_per_user_day:g} messages/day")
    print("\n".join(lines))
    print("assumptions:")
    print("\n".join(f"  - {a}" for a in assumptions))
    if args.report:
        policies = {}
        for name in ("round_robin", "least_loaded", "cache_aware"):
            other = dataclasses.replace(fleet, router=RouterConfig(policy=PolicyConfig(name=name)))
            policies[name] = load_point(
                dataclasses.replace(scenario, fleet=other), plan.capacity_per_replica
            )
        title = f"Capacity plan: {args.users:,.0f} users, {shape.name} on {accel.name}"
        write_report(
            Path(args.report),
            title,
            lines,
            assumptions,
            points,
            plan.capacity_per_replica,
            policies,
        )
        print(f"report: {args.report}")
    if args.json:
        Path(args.json).write_text(json.dumps(plan_json(plan, best, assumptions), indent=1) + "\n")
    return 0


def _assumptions(
    args: argparse.Namespace, scenario: Any, best: Any, step_model: Any, shape: Any, accel: Any
) -> list[str]:
    price = args.price_per_hour if args.price_per_hour is not None else accel.price_per_hour
    fleet = scenario.fleet
    sched = fleet.replica.scheduler
    desc = json.dumps(step_model.describe(), default=str)
    return [
        f"demand: {args.users:,.0f} users x {args.messages_per_user_day:g} messages/day, "
        f"peak/mean {args.peak_to_mean:g}; one smooth daily peak (von Mises curve, 20:00)",
        f"conversations: up to {args.turns} turns, {args.think_time:g} s between an answer and "
        f"the next turn, each turn resends the history; lengths from {args.lengths}, answers "
        f"capped at {args.max_tokens} tokens, scaled by {args.output_scale:g}; a shared system "
        f"prompt of "
        f"{args.system_prompt_tokens} tokens",
        f"model: {shape.name}, {shape.num_params / 1e9:.2f}B parameters, "
        f"{shape.weight_bytes_per_param:g} bytes/param, KV {shape.kv_bytes_per_token / 1024:.0f} "
        f"KiB/token",
        f"step-time model: {desc}",
        f"replica: max_num_seqs {sched.max_num_seqs}, max_num_batched_tokens "
        f"{sched.max_num_batched_tokens}, block size {fleet.replica.block_size}, "
        f"{fleet.replica.num_blocks:,} KV blocks, prefix caching "
        f"{'on' if fleet.replica.enable_prefix_caching else 'off'}",
        f"router: {fleet.router.policy.name}, load scraped every "
        f"{fleet.router.health.probe_interval_s:g} s",
        "serving overhead outside engine steps (ms): "
        + ", ".join(f"{k} {v * 1e3:.3g}" for k, v in fleet.overhead.to_meta().items()),
        f"price: ${price:.2f} per {accel.name} hour"
        + (" (given)" if args.price_per_hour is not None else " (list price, docs/capacity.md)"),
        f"simulated {fleet.num_replicas} replicas, at least {scenario.num_requests} requests "
        f"and {scenario.min_duration_s:g} s of arrivals per load point, seed {scenario.seed}; "
        f"statistics of the requests that started in the steady window, {best.window_s[0]:.0f}"
        f"-{best.window_s[1]:.0f} s at the chosen rate (after the median conversation's span, "
        "before the drain)"
        + ("" if best.is_steady else " - NOT steady: the run is too short, lengthen it")
        + "; the fleet is that per-replica rate scaled to the peak: 100M users are never "
        "simulated one by one",
        "not modelled: failures and retries after errors, network time between regions, "
        "cancelled requests, outputs ending early",
    ]


def cmd_calibrate(args: argparse.Namespace) -> int:
    from chatfleet.config import EngineConfig, SchedulerConfig
    from chatfleet.plan.calibrate import CalibrationGrid, calibrate_in_process

    log = functools.partial(print, file=sys.stderr, flush=True)
    if args.trace:
        from chatfleet.plan.step_model import LinearStepModel, samples_from_trace

        served = [s for path in args.trace for s in samples_from_trace(path)]
        model = LinearStepModel.fit_served(served, {"traces": args.trace})
    elif args.base_url and args.step_model:
        from chatfleet.plan.http_calibrate import measure_serving_overhead
        from chatfleet.plan.overhead import META_KEY
        from chatfleet.plan.step_model import LinearStepModel

        model = LinearStepModel.load(args.step_model)
        budget = args.max_num_batched_tokens
        overhead, report = measure_serving_overhead(args.base_url, model, budget, log=log)
        meta = {k: v for k, v in model.meta.items() if k not in ("request_overhead_s",)}
        meta |= {META_KEY: overhead.to_meta(), f"{META_KEY}_fit": report}
        model = dataclasses.replace(model, meta=meta)
        for term, value in overhead.to_meta().items():
            lo, hi = report["terms_p10_p90"].get(term, (value, value))
            spread = f"p10..p90 {lo * 1e3:+.3f}..{hi * 1e3:+.3f}"
            log(f"calibrate: {term} {value * 1e3:+.3f} ms ({spread})")
    elif args.base_url:
        from chatfleet.plan.http_calibrate import calibrate_http

        model = calibrate_http(args.base_url, args.max_num_batched_tokens, log)
    else:
        grid = CalibrationGrid()
        if args.grid == "quick":
            grid = CalibrationGrid((1, 4), (32, 256), (0, 128), 2, 2)
        threads = {} if args.num_threads is None else {"num_threads": args.num_threads}
        config = EngineConfig(
            model=args.model,
            device=args.device,
            weight_format=args.weight_format,
            scheduler=SchedulerConfig(max_num_batched_tokens=args.max_num_batched_tokens),
            **threads,
        )
        samples = str(Path(args.output).with_suffix(".samples.jsonl"))
        model = calibrate_in_process(config, grid, log, samples)
    model.save(args.output)
    err = model.fit_error
    print(f"{args.output}: fit error mean {err['mean']:.1%}, p90 {err['p90']:.1%}")
    return 0
