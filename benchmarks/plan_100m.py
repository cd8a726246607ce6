"""The 100M-user worked example of docs/capacity.md and its sensitivity variants.

Each variant differs from the example as named in VARIANTS. Every run is the CLI itself
(`chatfleet plan ... --json`, converged by default: the planner doubles its simulated
arrivals until the fleet settles), run as a subprocess, at most --jobs at a time (each
simulation uses one core). With --fixed-duration D every run searches once at D seconds of
arrivals instead (quicker, not converged: compare such runs only with each other). JSON and
logs in --out-dir, plus a summary.json with one row per run.

    .venv/bin/python benchmarks/plan_100m.py --variants base
    .venv/bin/python benchmarks/plan_100m.py --fixed-duration 60 --start-rate 20
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from local_fleet import BIN

EXAMPLE = shlex.split(
    "--users 100M --messages-per-user-day 10 --peak-to-mean 2 --sim-requests 1500 "
    "--slo ttft_p99:2000,tpot_p99:100 --model-shape llama-8b --accelerator h100"
)
VARIANTS = {
    "base": [],
    "output_0.5x": ["--output-scale", "0.5"],
    "output_2x": ["--output-scale", "2"],
    "round_robin": ["--policy", "round_robin"],
    "one_turn": ["--turns", "1"],
    "system_prompt_1000": ["--system-prompt-tokens", "1000"],
    "system_prompt_1000_no_cache": ["--system-prompt-tokens", "1000", "--no-prefix-caching"],
}


def launch(name: str, extra: list[str], duration: float | None, start_rate: float, out: Path):
    cmd = [str(BIN / "chatfleet"), "plan", *EXAMPLE, *extra]
    if duration is not None:
        cmd += ["--sim-duration", str(duration), "--no-converge"]
    cmd += ["--start-rate", f"{start_rate:.4g}", "--json", str(out / f"{name}.json")]
    log = open(out / f"{name}.log", "w")  # noqa: SIM115
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), time.monotonic()


def row(name: str, out: Path, wall_s: float) -> dict:
    data = json.loads((out / f"{name}.json").read_text())
    plan, point = data["plan"], data["capacity_point"]
    return {
        "name": name,
        "capacity_per_replica": plan["capacity_per_replica"],
        "replicas": plan["replicas"],
        "cost_per_day": data["cost_per_day"],
        "cost_per_million_output_tokens": data["cost_per_million_output_tokens"],
        "prefix_hit_rate": plan["prefix_hit_rate"],
        "output_tokens_per_request": plan["output_tokens_per_request"],
        "ttft_p99_ms": point["ttft_ms"]["p99"],
        "tpot_p99_ms": point["tpot_ms"]["p99"],
        "steady_window_s": data["steady_window_s"],
        "is_steady": data["is_steady"],
        "converged": data["convergence"]["converged"],
        "convergence": data["convergence"]["steps"],
        "wall_s": round(wall_s),
    }


def run_all(jobs: list[tuple[str, list[str], float | None, float]], out: Path, width: int) -> list:
    """Run (name, extra args, duration, start rate) jobs, `width` at a time; their rows."""
    pending, rows = list(jobs), []
    running: list[tuple[str, subprocess.Popen, float]] = []
    while pending or running:
        while pending and len(running) < width:
            name, extra, duration, rate = pending.pop(0)
            running.append((name, *launch(name, extra, duration, rate, out)))
        time.sleep(2)
        for job in [j for j in running if j[1].poll() is not None]:
            running.remove(job)
            name, proc, started = job
            if proc.returncode != 0:
                print(f"{name}: exit {proc.returncode}, see {out / name}.log", flush=True)
                continue
            rows.append(row(name, out, time.monotonic() - started))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out-dir", default="results/plan_100m")
    p.add_argument("--fixed-duration", type=float, default=None, help="seconds of arrivals")
    p.add_argument("--start-rate", type=float, default=8.0, help="req/s per replica, 1st probe")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = args.variants.split(",")
    jobs = [(n, VARIANTS[n], args.fixed_duration, args.start_rate) for n in names]
    rows = run_all(jobs, out, args.jobs)
    (out / "summary.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
