"""The whole of `chatfleet plan`: a PlanRequest in, a converged FleetPlan out.

    PlanRequest --> step model (measured steps.json, or the roofline of an accelerator)
                --> Scenario (conversation lengths, simulated fleet, SLOs)
                --> find_capacity at --sim-duration seconds of arrivals
                --> again at twice the duration, ... until the fleet size moves by less than
                    `converge_tolerance` (or `max_sim_duration_s` is reached: said so)
                --> plan_fleet: the per-replica capacity scaled to the user base's peak

A short run over-states capacity (a queue just past the knee grows slowly, and a short run
cannot tell it from a rate the fleet sustains), so the default answer is the converged one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chatfleet.config.engine_config import SchedulerConfig
from chatfleet.config.flags import format_bytes, parse_bytes, parse_count, setting
from chatfleet.config.router_config import POLICY_NAMES, PolicyConfig, RouterConfig
from chatfleet.plan import traffic
from chatfleet.plan.capacity import Demand, FleetPlan, plan_fleet
from chatfleet.plan.hardware import (
    AcceleratorProfile,
    ModelShape,
    get_accelerator,
    load_model_shape,
)
from chatfleet.plan.overhead import ServingOverhead
from chatfleet.plan.roofline import RooflineParams, RooflineStepModel
from chatfleet.plan.search import LoadPoint, Scenario, SloTargets, find_capacity, load_point
from chatfleet.plan.sim_replica import ReplicaSpec
from chatfleet.plan.simulator import FleetSpec
from chatfleet.plan.step_model import LinearStepModel, StepTimeModel

BLOCK_SIZE = 16
DEFAULT_KV_BYTES = 2 << 30  # per replica, with a measured step model (the server's default)


@dataclass(frozen=True)
class PlanRequest:
    """What to plan for; each field is a `chatfleet plan` flag (config/flags.py)."""

    users: float | None = field(default=None, metadata=setting(help="e.g. 100M", parse=parse_count))
    messages_per_user_day: float = 10.0
    peak_to_mean: float = field(default=2.0, metadata=setting(help="peak / mean request rate"))
    slo: str = "ttft_p99:2000,tpot_p99:100"
    model_shape: str = field(
        default="llama-8b", metadata=setting(help="llama-8b, llama-70b, a config or a GGUF")
    )
    accelerator: str = field(default="h100", metadata=setting(help="h100, h200, a100, l4"))
    tp: int = field(default=1, metadata=setting(help="tensor-parallel degree"))
    policy: str = field(default="cache_aware", metadata=setting(choices=POLICY_NAMES))
    step_model: str | None = field(
        default=None, metadata=setting(help="measured steps.json (chatfleet plan calibrate)")
    )
    price_per_hour: float | None = field(
        default=None, metadata=setting(help="USD per accelerator hour (default: list price)")
    )
    weight_bytes: float = field(default=2.0, metadata=setting(help="bytes per parameter"))
    kv_cache_memory_bytes: int | None = field(
        default=None,
        metadata=setting("kv_cache_memory", "KV cache per replica", parse_bytes, format_bytes),
    )
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    max_model_len: int = 8192
    lengths: str = field(
        default="sharegpt", metadata=setting(help="sharegpt | fixed:IN,OUT | bench:FILE")
    )
    turns: int = field(default=3, metadata=setting(help="turns per conversation"))
    max_tokens: int = field(default=512, metadata=setting(help="cap on answer lengths"))
    output_scale: float = field(
        default=1.0, metadata=setting(help="answers this many times longer")
    )
    think_time_s: float = field(default=20.0, metadata=setting(help="seconds between turns"))
    system_prompt_tokens: int = field(
        default=0, metadata=setting(help="a system prompt every conversation shares")
    )
    enable_prefix_caching: bool = field(default=True, metadata=setting("prefix_caching"))
    overhead_ms: float | None = field(
        default=None, metadata=setting(help="per request, outside engine steps")
    )
    sim_replicas: int = field(default=2, metadata=setting(help="replicas simulated"))
    sim_requests: int = field(default=2000, metadata=setting(help="requests per load point"))
    sim_duration_s: float = field(
        default=60.0, metadata=setting(help="seconds of arrivals of the first search")
    )
    converge: bool = field(
        default=True,
        metadata=setting(help="double the arrivals until the fleet size settles"),
    )
    converge_tolerance: float = field(
        default=0.03, metadata=setting(help="settled: the fleet changes by less than this")
    )
    max_sim_duration_s: float = field(
        default=960.0, metadata=setting(help="the longest search (seconds of arrivals)")
    )
    seed: int = 0
    start_rate: float = field(
        default=1.0, metadata=setting(help="req/s per replica of the first probe")
    )


@dataclass(frozen=True)
class ConvergenceStep:
    sim_duration_s: float
    capacity_per_replica: float
    replicas: int


@dataclass(frozen=True)
class PlanAnswer:
    request: PlanRequest
    plan: FleetPlan
    best: LoadPoint  # the capacity point of the last search
    points: list[LoadPoint]  # every point of the last search, by rate
    scenario: Scenario  # of the last search
    steps: list[ConvergenceStep]
    is_converged: bool
    title: str
    assumptions: list[str]


@dataclass(frozen=True)
class _Model:
    """What the request's model and hardware come to."""

    shape: ModelShape
    accelerator: AcceleratorProfile
    step_model: StepTimeModel
    kv_bytes: float
    overhead: ServingOverhead


def _model(req: PlanRequest) -> _Model:
    accel = get_accelerator(req.accelerator)
    shape = load_model_shape(req.model_shape, req.weight_bytes)
    step_model: StepTimeModel
    if req.step_model:
        measured = LinearStepModel.load(req.step_model)
        overhead = ServingOverhead.from_meta(measured.meta)
        step_model, kv_bytes = measured, float(req.kv_cache_memory_bytes or DEFAULT_KV_BYTES)
    else:
        roofline = RooflineStepModel(shape, accel, RooflineParams(tp=req.tp))
        overhead = ServingOverhead()
        step_model, kv_bytes = (
            roofline,
            float(req.kv_cache_memory_bytes or roofline.kv_cache_bytes()),
        )
    if req.overhead_ms is not None:
        overhead = dataclasses.replace(overhead, ingress_s=req.overhead_ms / 1e3)
    return _Model(shape, accel, step_model, kv_bytes, overhead)


def _lengths(req: PlanRequest) -> list[tuple[traffic.TurnShape, ...]]:
    kind, _, arg = req.lengths.partition(":")
    if kind == "fixed":
        prompt, output = (int(x) for x in arg.split(","))
        lengths = traffic.fixed_lengths(req.turns, prompt, output)
    elif kind == "bench":
        from chatfleet.bench.result import load_result, records_from_result

        lengths = traffic.lengths_from_records(records_from_result(load_result(arg)))
    elif kind == "sharegpt":
        from chatfleet.modelfile.tokenizer import Tokenizer

        num = max(50, req.sim_requests // max(req.turns, 1))
        tok = functools.partial(Tokenizer.from_model_path, None)
        lengths = traffic.sharegpt_lengths(num, req.turns, req.max_tokens, req.seed, tok)
    else:
        raise ValueError(f"lengths: expected sharegpt, fixed:IN,OUT or bench:FILE, got {kind!r}")
    lengths = traffic.scale_outputs(lengths, req.output_scale)
    return traffic.with_system_prompt(lengths, req.system_prompt_tokens)


def _scenario(req: PlanRequest, model: _Model, slo: SloTargets) -> Scenario:
    scheduler = SchedulerConfig(req.max_num_seqs, req.max_num_batched_tokens, req.max_model_len)
    num_blocks = int(model.kv_bytes // (model.shape.kv_bytes_per_token * BLOCK_SIZE))
    fleet = FleetSpec(
        req.sim_replicas,
        ReplicaSpec(scheduler, num_blocks, BLOCK_SIZE, req.enable_prefix_caching),
        RouterConfig(policy=PolicyConfig(name=req.policy)),
        model.overhead,
    )
    return Scenario(
        _lengths(req),
        fleet,
        model.step_model,
        slo,
        req.sim_requests,
        req.think_time_s,
        seed=req.seed,
        min_duration_s=req.sim_duration_s,
        shared_prefix_tokens=req.system_prompt_tokens,
    )


def make_plan(req: PlanRequest, log: Callable[[str], None] = lambda s: None) -> PlanAnswer | None:
    """The plan, or None when no fleet meets the SLOs (even a nearly idle replica misses
    them). ValueError / OSError for a bad request (unknown accelerator, missing file)."""
    if req.users is None:
        raise ValueError("--users is required (or run `chatfleet plan calibrate`)")
    slo = SloTargets.parse(req.slo)
    model = _model(req)
    scenario = _scenario(req, model, slo)
    demand = Demand(req.users, req.messages_per_user_day, req.peak_to_mean)
    price = (
        req.price_per_hour if req.price_per_hour is not None else model.accelerator.price_per_hour
    )
    tp = 1 if req.step_model else req.tp
    steps: list[ConvergenceStep] = []
    start_rate, duration = req.start_rate, req.sim_duration_s
    while True:
        scenario = dataclasses.replace(scenario, min_duration_s=duration)
        log(f"plan: searching with {duration:g} s of arrivals")
        best, points = find_capacity(scenario, start_rate, log=log)
        if best is None:
            return None
        plan = plan_fleet(demand, best, tp, price, model.kv_bytes, model.shape.kv_bytes_per_token)
        steps.append(ConvergenceStep(duration, best.rate_per_replica, plan.replicas))
        # NOTE: a search whose arrivals end before a full turn mix has no steady window:
        # its answer is not one to stop at, however little it moved.
        is_converged = (
            len(steps) > 1 and best.is_steady and _change(steps) <= req.converge_tolerance
        )
        if not req.converge or is_converged or 2 * duration > req.max_sim_duration_s:
            break
        # NOTE: a longer run's capacity is lower (its queues have time to grow): the next
        # search starts a little under this one's answer instead of from scratch.
        start_rate, duration = 0.7 * best.rate_per_replica, 2 * duration
    title = f"Capacity plan: {req.users:,.0f} users, {model.shape.name} on {model.accelerator.name}"
    answer = PlanAnswer(req, plan, best, points, scenario, steps, is_converged, title, [])
    return dataclasses.replace(answer, assumptions=assumptions(answer, model, price))


def _change(steps: list[ConvergenceStep]) -> float:
    """The last doubling's relative change of the fleet size."""
    before, after = steps[-2].replicas, steps[-1].replicas
    return abs(after - before) / max(before, 1)


def convergence_line(answer: PlanAnswer) -> str:
    """What the convergence loop did, in one line of the plan's output."""
    sizes = ", ".join(f"{s.sim_duration_s:g} s: {s.replicas:,}" for s in answer.steps)
    req = answer.request
    if not req.converge:
        return f"NOT checked for convergence (--no-converge); fleet at {sizes}"
    if answer.is_converged:
        return (
            f"converged: the fleet changed by {_change(answer.steps):.1%} on the last doubling "
            f"of the simulated arrivals (tolerance {req.converge_tolerance:.0%}); {sizes}"
        )
    return (
        f"NOT converged by {req.max_sim_duration_s:g} s of arrivals (tolerance "
        f"{req.converge_tolerance:.0%}): the fleet may be larger; {sizes}"
    )


def policy_points(answer: PlanAnswer) -> dict[str, LoadPoint]:
    """Each routing policy at the plan's capacity, on the same simulated traffic."""
    out = {}
    rate = answer.plan.capacity_per_replica
    for name in ("round_robin", "least_loaded", "cache_aware"):
        router = RouterConfig(policy=PolicyConfig(name=name))
        fleet = dataclasses.replace(answer.scenario.fleet, router=router)
        out[name] = load_point(dataclasses.replace(answer.scenario, fleet=fleet), rate)
    return out


def assumptions(answer: PlanAnswer, model: _Model, price: float) -> list[str]:
    req, scenario, best = answer.request, answer.scenario, answer.best
    fleet = scenario.fleet
    sched = fleet.replica.scheduler
    shape = model.shape
    desc = json.dumps(model.step_model.describe(), default=str)
    users = req.users or 0.0
    return [
        f"demand: {users:,.0f} users x {req.messages_per_user_day:g} messages/day, "
        f"peak/mean {req.peak_to_mean:g}; one smooth daily peak (von Mises curve, 20:00)",
        f"conversations: up to {req.turns} turns, {req.think_time_s:g} s between an answer and "
        f"the next turn, each turn resends the history; lengths from {req.lengths}, answers "
        f"capped at {req.max_tokens} tokens, scaled by {req.output_scale:g}; a shared system "
        f"prompt of {req.system_prompt_tokens} tokens",
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
        f"price: ${price:.2f} per {model.accelerator.name} hour"
        + (" (given)" if req.price_per_hour is not None else " (list price, docs/capacity.md)"),
        f"simulated {fleet.num_replicas} replicas, at least {scenario.num_requests} requests "
        f"and {scenario.min_duration_s:g} s of arrivals per load point, seed {scenario.seed}; "
        f"statistics of the requests that started in the steady window, {best.window_s[0]:.0f}"
        f"-{best.window_s[1]:.0f} s at the chosen rate (after the median conversation's span, "
        "before the drain)"
        + ("" if best.is_steady else " - NOT steady: the run is too short, lengthen it")
        + "; the fleet is that per-replica rate scaled to the peak: 100M users are never "
        "simulated one by one",
        "simulated arrivals: " + convergence_line(answer),
        "not modelled: failures and retries after errors, network time between regions, "
        "cancelled requests, outputs ending early",
    ]


def plan_summary(answer: PlanAnswer) -> dict[str, Any]:
    """The convergence record for the plan's JSON."""
    return {
        "converged": answer.is_converged,
        "tolerance": answer.request.converge_tolerance,
        "steps": [dataclasses.asdict(s) for s in answer.steps],
    }
