"""The plan as text (terminal) and as a markdown report with the knee plot and a policy table."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from chatfleet.extras import pyplot
from chatfleet.plan.capacity import FleetPlan
from chatfleet.plan.search import LoadPoint

GIB = 1 << 30


def _money(x: float) -> str:
    return f"${x:,.0f}" if x >= 100 else f"${x:,.2f}"


def plan_lines(plan: FleetPlan, point: LoadPoint, slo: str) -> list[str]:
    s = point.summary
    return [
        f"demand: mean {plan.mean_rate:,.1f} req/s, peak {plan.peak_rate:,.1f} req/s",
        f"capacity: {plan.capacity_per_replica:.3g} req/s per replica within {slo} "
        f"(simulated p99 TTFT {s.ttft_ms.p99 or 0:.0f} ms, p99 TPOT {s.tpot_ms.p99 or 0:.1f} ms, "
        f"prefix-cache hit rate {plan.prefix_hit_rate:.1%})",
        f"fleet at peak: {plan.replicas:,} replicas x {plan.accelerators_per_replica} = "
        f"{plan.accelerators:,} accelerators",
        f"tokens/s at peak: {plan.peak_tokens_per_s:,.0f} "
        f"({plan.peak_output_tokens_per_s:,.0f} output)",
        f"per request: {plan.prompt_tokens_per_request:.0f} prompt tokens (history included), "
        f"{plan.output_tokens_per_request:.0f} output tokens",
        f"KV cache per replica: {plan.kv_cache_bytes_per_replica / GIB:.1f} GiB "
        f"({plan.kv_cache_tokens_per_replica:,} tokens)",
        f"cost per day: {_money(plan.cost_per_day)} sized for the peak all day; "
        f"{_money(plan.cost_per_day_autoscaled)} scaled hour by hour "
        f"({plan.replica_hours_autoscaled:,} replica-hours)",
        f"cost per million tokens: {_money(plan.cost_per_million(plan.tokens_per_day))} "
        f"(all tokens), {_money(plan.cost_per_million(plan.output_tokens_per_day))} per million "
        f"output tokens; autoscaled "
        f"{_money(plan.cost_per_million(plan.output_tokens_per_day, autoscaled=True))}",
    ]


def plot_knee(points: Sequence[LoadPoint], capacity: float | None, path: Path) -> None:
    """TTFT and TPOT (mean, p99) against the per-replica request rate."""
    plt = pyplot()
    rates = [p.rate_per_replica for p in points]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("ttft", "tpot"), strict=True):
        for stat, style in (("mean", "o-"), ("p99", "s--")):
            values = [getattr(getattr(p.summary, f"{metric}_ms"), stat) for p in points]
            ax.plot(
                rates, [v if v is not None else float("nan") for v in values], style, label=stat
            )
        if capacity is not None:
            ax.axvline(capacity, color="gray", linestyle=":", label="capacity at SLO")
        ax.set_xlabel("requests/s per replica")
        ax.set_ylabel(f"{metric.upper()} (ms)")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(
    path: Path,
    title: str,
    lines: list[str],
    assumptions: list[str],
    points: Sequence[LoadPoint],
    capacity: float | None,
    policies: dict[str, LoadPoint],
) -> None:
    """Markdown with the plan, the assumptions, the knee plot and the policy comparison."""
    plot = path.with_name(path.stem + "_knee.png")
    plot_knee(points, capacity, plot)
    out = [f"# {title}", "", *[f"- {line}" for line in lines], "", "## Assumptions", ""]
    out += [f"- {a}" for a in assumptions]
    out += ["", "## Latency against load", "", f"![latency vs load]({plot.name})", ""]
    out += [
        "| req/s per replica | TTFT mean | TTFT p99 | TPOT mean | TPOT p99 | hit rate | SLO |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    out += [_row(f"{p.rate_per_replica:.3g}", p) for p in points]
    if policies:
        rate = next(iter(policies.values())).rate_per_replica
        out += ["", f"## Routing policies at {rate:.3g} req/s per replica", ""]
        out += [
            "| policy | TTFT mean | TTFT p99 | TPOT mean | TPOT p99 | hit rate | SLO |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        out += [_row(name, p) for name, p in policies.items()]
    path.write_text("\n".join(out) + "\n", encoding="utf-8")


def _row(label: str, p: LoadPoint) -> str:
    s = p.summary

    def ms(x: float | None) -> str:
        return "-" if x is None else f"{x:.0f}"

    verdict = "met" if p.meets_slo else "missed: " + "; ".join(p.misses)
    return (
        f"| {label} | {ms(s.ttft_ms.mean)} | {ms(s.ttft_ms.p99)} | {ms(s.tpot_ms.mean)} | "
        f"{ms(s.tpot_ms.p99)} | {p.prefix_hit_rate:.1%} | {verdict} |"
    )


def plan_json(plan: FleetPlan, point: LoadPoint, assumptions: list[str]) -> dict:
    return {
        "plan": dataclasses.asdict(plan),
        "accelerators": plan.accelerators,
        "cost_per_day": plan.cost_per_day,
        "cost_per_day_autoscaled": plan.cost_per_day_autoscaled,
        "cost_per_million_tokens": plan.cost_per_million(plan.tokens_per_day),
        "cost_per_million_output_tokens": plan.cost_per_million(plan.output_tokens_per_day),
        "capacity_point": dataclasses.asdict(point.summary),
        "steady_window_s": list(point.window_s),
        "is_steady": point.is_steady,
        "assumptions": assumptions,
    }
