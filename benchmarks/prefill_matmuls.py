"""The layer-by-layer int8 matmuls of a prefill chunk (and of a decode step the fused call does
not take), and the output head: this tree's kernel against a baseline tree's, its AMX tile pass
(where this process may use AMX) and oneDNN's bf16 (the matmul plan's other kernel),
alternating in one process.

The real model's first decoder layer, each matmul with the prologue and residual it has in
the model (qkv and gate_up after their RMSNorm, down after SwiGLU, o and down onto the
residual), and the head after the final RMSNorm, at each row count; the baseline's and the
tile pass's outputs compared with the VNNI kernel's bit for bit. Writes JSON.

    .venv/bin/python benchmarks/prefill_matmuls.py --baseline ../base --output results/p.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from attention_memory import git_head, this_and_baseline
from offline_throughput import cpu_info

from chatfleet import LLM
from chatfleet.model import kernels
from chatfleet.model.matmul_plan import ALL_BUCKETS, BUCKETS


def cases(model: Any, rows: int) -> list[tuple[str, Any, dict]]:
    """(name, linear, arguments) for each matmul of the first layer, and the head, at `rows`
    rows."""
    layer = model.layers[0]
    gen = torch.Generator().manual_seed(rows)
    eps = 1e-5

    def x(width: int) -> torch.Tensor:
        return torch.randn(rows, width, generator=gen)

    hidden, inter2 = layer.o.out_features, layer.gate_up.out_features
    return [
        ("qkv", layer.qkv, dict(x=x(hidden), norm=layer.attn_norm.data, eps=eps)),
        ("o", layer.o, dict(x=x(layer.o.in_features), residual=x(hidden))),
        ("gate_up", layer.gate_up, dict(x=x(hidden), norm=layer.ffn_norm.data, eps=eps)),
        ("down", layer.down, dict(x=x(inter2), swiglu=True, residual=x(hidden))),
        ("head", model.lm_head, dict(x=x(hidden), norm=model.norm.data, eps=eps)),
    ]


def call(module: Any, linear: Any, args: dict, **tiles: Any) -> torch.Tensor:
    return module.qlinear(
        args["x"],
        linear.packed,
        linear.scales,
        linear.zeros,
        kernels.num_threads(),
        args.get("norm"),
        args.get("eps", 0.0),
        args.get("swiglu", False),
        args.get("residual"),
        **tiles,
    )


Variant = Callable[[Any, dict], torch.Tensor]


def variants(modules: dict[str, Any], bf16: bool) -> dict[str, Variant]:
    """How each contender multiplies (linear, arguments): this tree's kernel ("current"), the
    baseline's, this tree's on AMX tiles, oneDNN bf16 through the linear's plan path."""
    out: dict[str, Variant] = {k: functools.partial(call, m) for k, m in modules.items()}
    if kernels.amx_tiles():
        out["amx-int8"] = functools.partial(call, modules["current"], tile_mask=ALL_BUCKETS)
    if bf16:
        out["bf16"] = lambda linear, args: linear.fused(
            args["x"], args.get("norm"), args.get("eps", 0.0), args.get("swiglu", False),
            args.get("residual"),
        )  # fmt: skip
    return out


def measure(runs: dict[str, Variant], model: Any, rows: int, rounds: int, reps: int) -> list[dict]:
    results = []
    for name, linear, args in cases(model, rows):
        times: dict[str, list[float]] = {k: [] for k in runs}
        outs = {k: run(linear, args) for k, run in runs.items()}  # warm, and the bits
        for r in range(rounds):
            # Alternating, and in turn first: the machine drifts, and a call can leave the
            # next one the weights in cache.
            order = list(runs.items())
            for key, run in order if r % 2 == 0 else order[::-1]:
                start = time.perf_counter()
                for _ in range(reps):
                    run(linear, args)
                times[key].append((time.perf_counter() - start) / reps * 1e3)
        entry: dict[str, Any] = {"matmul": name, "rows": rows}
        entry.update({k: round(statistics.median(v), 3) for k, v in times.items()})
        for other in (k for k in runs if k != "current"):
            # Per round: a burst of the machine's drift lands on both calls of a round.
            pairs = zip(times["current"], times[other], strict=True)
            entry[f"ratio_to_{other}"] = round(statistics.median(c / o for c, o in pairs), 3)
            if other != "bf16":  # the others compute the very same bits
                entry[f"same_output_as_{other}"] = bool(torch.equal(outs["current"], outs[other]))
        print(json.dumps(entry), flush=True)
        results.append(entry)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", default="64,512")
    p.add_argument("--rounds", type=int, default=31)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--baseline", default=None, help="another source tree to compare against")
    p.add_argument("--no-bf16", action="store_true", help="leave oneDNN's bf16 out")
    p.add_argument("--output", default="results/prefill_matmuls.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    kernels.set_num_threads(args.threads)
    modules = this_and_baseline("qlinear", args.baseline)
    model = LLM(num_threads=args.threads).engine.runner.model
    if not args.no_bf16:  # each linear's bf16 copy, taken at every row count
        for _, linear, _ in cases(model, 1):
            linear.use_plan(("bf16",) * len(BUCKETS))
    runs = variants(modules, bf16=not args.no_bf16)
    results = []
    for rows in (int(r) for r in args.rows.split(",")):
        results += measure(runs, model, rows, args.rounds, args.reps)
    report = {
        "cpu": cpu_info(),
        "baseline": git_head(args.baseline) if args.baseline else None,
        "results": results,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
