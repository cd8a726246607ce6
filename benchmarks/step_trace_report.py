"""Which steps a step model gets wrong: the steps of server step traces (`chatfleet serve
--step-trace`), grouped by kind (prefill chunk size, decode batch rows), measured against
modelled mean time per kind.

    .venv/bin/python benchmarks/step_trace_report.py --step-model steps.json TRACE... \\
        [--since T --until T] [--json out.json]

TRACE may be gzipped (docs/results keeps them so). --since/--until: time.monotonic()
readings of the traced machine, to cut one run out of a longer trace.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from chatfleet.plan.step_mix import StepMix, model_error, model_error_by_class
from chatfleet.plan.step_model import LinearStepModel, samples_from_trace


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("traces", nargs="+")
    p.add_argument("--step-model", required=True)
    p.add_argument("--since", type=float, default=float("-inf"))
    p.add_argument("--until", type=float, default=float("inf"))
    p.add_argument("--json", default=None)
    args = p.parse_args()
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


if __name__ == "__main__":
    sys.exit(main())
