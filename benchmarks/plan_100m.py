"""The 100M-user worked example of docs/capacity.md: its convergence check and sensitivity runs.

    convergence  `chatfleet plan` at increasing --sim-duration (each search starting at 0.7 of
                 the previous capacity) until the fleet changes by less than --tolerance
    variants     the example at one duration, each variant differing from it as named below

Every run is the CLI itself (`chatfleet plan ... --json`), run as a subprocess, at most
--jobs at a time (each simulation uses one core). JSON in --out-dir (default
docs/results/plan_100m/), plus a summary.json with one row per run.

    .venv/bin/python benchmarks/plan_100m.py convergence --durations 60,120,240
    .venv/bin/python benchmarks/plan_100m.py variants --duration 120 --start-rate 20
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


def launch(name: str, extra: list[str], duration: float, start_rate: float, out: Path):
    cmd = [str(BIN / "chatfleet"), "plan", *EXAMPLE, *extra, "--sim-duration", str(duration)]
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
        "wall_s": round(wall_s),
    }


def run_all(jobs: list[tuple[str, list[str], float, float]], out: Path, width: int) -> list:
    """Run (name, extra args, duration, start rate) jobs, `width` at a time; their rows."""
    pending, running, rows = list(jobs), [], []
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
    p.add_argument("what", choices=["convergence", "variants"])
    p.add_argument("--out-dir", default="docs/results/plan_100m")
    p.add_argument("--durations", default="60,120,240", help="convergence: seconds of arrivals")
    p.add_argument("--duration", type=float, default=120.0, help="variants: seconds of arrivals")
    p.add_argument("--start-rate", type=float, default=8.0, help="req/s per replica, 1st probe")
    p.add_argument("--tolerance", type=float, default=0.03, help="convergence: fleet change")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args()
    out = Path(args.out_dir) / args.what
    out.mkdir(parents=True, exist_ok=True)
    if args.what == "variants":
        names = args.variants.split(",")
        jobs = [(n, VARIANTS[n], args.duration, args.start_rate) for n in names]
        rows = run_all(jobs, out, args.jobs)
    else:
        # NOTE: sequential, each search started near the last answer; --jobs runs the first
        # durations side by side (each from --start-rate) to use both cores.
        durations = [float(d) for d in args.durations.split(",")]
        first = [(f"d{d:g}", [], d, args.start_rate) for d in durations[: args.jobs]]
        rows = run_all(first, out, args.jobs)
        for d in durations[args.jobs :]:
            converged = len(rows) >= 2 and abs(rows[-1]["replicas"] / rows[-2]["replicas"] - 1)
            if converged is not False and converged <= args.tolerance:
                break
            rate = 0.7 * rows[-1]["capacity_per_replica"]
            rows += run_all([(f"d{d:g}", [], d, rate)], out, 1)
    (out / "summary.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
