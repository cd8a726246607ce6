"""`chatfleet plan`: fleet size and cost for a user base at given SLOs; `plan calibrate`.

Exit status: 0 with a plan, 1 when no fleet meets the SLOs (or calibration fails), 2 for bad
arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
from pathlib import Path
from typing import Any

from chatfleet.config import flags
from chatfleet.entrypoints.parsing import add_command
from chatfleet.plan.planner import PlanRequest


def add_plan_args(p: argparse.ArgumentParser) -> None:
    flags.add_flags(p, PlanRequest)
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


def cmd_plan(args: argparse.Namespace) -> int:
    from chatfleet.plan import planner
    from chatfleet.plan.report import plan_json, plan_lines, write_report

    request = flags.from_args(PlanRequest, args)
    log = functools.partial(print, file=sys.stderr, flush=True)
    try:
        answer = planner.make_plan(request, log)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if answer is None:
        print(
            f"no fleet meets {request.slo}: even a nearly idle replica misses it", file=sys.stderr
        )
        return 1
    lines = plan_lines(answer.plan, answer.best, request.slo)
    users = request.users or 0.0
    print(f"chatfleet plan: {users:,.0f} users x {request.messages_per_user_day:g} messages/day")
    print("\n".join(lines))
    print(planner.convergence_line(answer))
    print("assumptions:")
    print("\n".join(f"  - {a}" for a in answer.assumptions))
    if args.report:
        capacity = answer.plan.capacity_per_replica
        policies = planner.policy_points(answer)
        report = Path(args.report)
        write_report(
            report, answer.title, lines, answer.assumptions, answer.points, capacity, policies
        )
        print(f"report: {args.report}")
    if args.json:
        data = plan_json(answer.plan, answer.best, answer.assumptions)
        data["convergence"] = planner.plan_summary(answer)
        Path(args.json).write_text(json.dumps(data, indent=1) + "\n")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from chatfleet.config.engine_config import EngineConfig, SchedulerConfig
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
        meta = {**model.meta, META_KEY: overhead.to_meta(), f"{META_KEY}_fit": report}
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


def register(sub: Any) -> None:
    about = "fleet size and cost for a user base at given SLOs"
    plan = add_command(sub, "plan", about, add_plan_args, cmd_plan)
    calibrate = "time engine steps; fit steps.json"
    plan_sub = plan.add_subparsers(dest="plan_command")
    add_command(plan_sub, "calibrate", calibrate, add_calibrate_args, cmd_calibrate)
