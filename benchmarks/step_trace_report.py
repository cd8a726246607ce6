"""Which steps a step model gets wrong: the steps of server step traces (`chatfleet serve
--step-trace`), grouped by kind (prefill chunk size, decode batch rows), measured against
modelled mean time per kind.

    .venv/bin/python benchmarks/step_trace_report.py --step-model steps.json TRACE... \\
        [--since T --until T] [--json out.json]

TRACE may be gzipped (docs/results keeps them so). --since/--until: time.monotonic()
readings of the traced machine, to cut one run out of a longer trace.

    .venv/bin/python benchmarks/step_trace_report.py --runs docs/results/plan_validation_s8

A `benchmarks/plan_validation.py` run directory instead: its trace model against the steps of
every run, calibration (paired ones too) and validation, in the order they ran, kind by kind
(does the machine drift, or does the model miss some load?), and the same for one model fitted
on all of them (what no single set of coefficients can follow).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from chatfleet.plan.step_mix import StepMix, model_error, model_error_by_class
from chatfleet.plan.step_model import LinearStepModel, StepSample, samples_from_trace


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("traces", nargs="*")
    p.add_argument("--step-model", default=None)
    p.add_argument("--since", type=float, default=float("-inf"))
    p.add_argument("--until", type=float, default=float("inf"))
    p.add_argument("--runs", default=None, help="a plan_validation run directory")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.runs:
        return runs_report(Path(args.runs), args.json)
    if not args.traces or not args.step_model:
        p.error("TRACE... and --step-model, or --runs DIR")
    model = LinearStepModel.load(args.step_model)
    samples = [s for path in args.traces for s in samples_from_trace(path, args.since, args.until)]
    if not samples:
        print("no steps in the traces (or in the time window)", file=sys.stderr)
        return 1
    by_class = model_error_by_class(model, samples)
    report = {
        "step_model": args.step_model,
        "traces": args.traces,
        "steps": StepMix.of(samples).summary(),
        "model_error": model_error(model, samples),
        "by_class": by_class,
    }
    print(f"{'kind':<16}{'steps':>7}{'measured ms':>13}{'model ms':>10}{'error':>8}")
    for name, row in by_class.items():
        print(
            f"{name:<16}{row['num_steps']:>7}{row['measured_ms']:>13.1f}"
            f"{row['model_ms']:>10.1f}{row['error']:>+8.0%}"
        )
    total = report["model_error"]
    print(f"all: model {total['total']:+.1%} of measured time, |error| {total['mean_abs']:.0%}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


def runs_report(run_dir: Path, json_path: str | None) -> int:
    sys.path.insert(0, str(Path(__file__).parent))
    from plan_validation import traced_steps

    model = LinearStepModel.load(run_dir / "steps_trace.json")
    if "calibration_windows" not in model.meta:
        print(f"{run_dir}: its trace model keeps no calibration windows (before session 8)")
        return 1
    rates, spans = model.meta["calibration_rates"], model.meta["calibration_windows"]
    windows = [
        (f"calibration {k} ({rate:g} req/s)", w)
        for k, (rate, w) in enumerate(zip(rates, spans, strict=True))
    ]
    for path in sorted(run_dir.glob("steps_paired-*.json")):  # --paired-calibration
        paired = LinearStepModel.load(path)
        label = path.stem.removeprefix("steps_paired-")
        windows += [(f"paired for {label}", w) for w in paired.meta["calibration_windows"]]
    runs = json.loads(run_dir.with_suffix(".json").read_text())["runs"]
    windows += [(f"run {r['label']}", r["trace_window"]) for r in runs]
    windows.sort(key=lambda w: w[1][0])
    steps: dict[str, list[StepSample]] = {name: traced_steps(run_dir, *w)[0] for name, w in windows}
    every = [s for v in steps.values() for s in v]
    pooled = LinearStepModel.fit_served(every, {"fitted_on": f"every run of {run_dir}"})
    start = windows[0][1][0]
    report = {}
    for label, m in (("trace model", model), ("one model fitted on every run", pooled)):
        print(f"{label}: model time / measured time - 1, by kind of step (steps)")
        rows = report.setdefault(label, {})
        for name, w in windows:
            by_class = model_error_by_class(m, steps[name])
            total = model_error(m, steps[name])["total"]
            rows[name] = {"minute": (w[0] - start) / 60, "total": total, "by_class": by_class}
            cells = [f"{c} {r['error']:+.1%} ({r['num_steps']})" for c, r in by_class.items()]
            print(
                f"  {name:<26} min {(w[0] - start) / 60:5.1f}  all {total:+.1%}  "
                + ", ".join(cells)
            )
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
