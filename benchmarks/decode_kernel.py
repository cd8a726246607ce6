"""The fused decode call (every decoder layer of a decode-only step in one C++ call) on the
default model, at one and few streams, where a step is the weights streamed from memory: ms a
call and the weight bytes read per second, against a plain read of as many bytes from a 1 GiB
buffer, timed between the calls.

    .venv/bin/python benchmarks/decode_kernel.py --output docs/results/decode_kernel.json
    .venv/bin/python benchmarks/decode_kernel.py --baseline DIR   # before/after a change

`--spread` gives the step's requests contexts from the full one down to a quarter, oldest first,
as a running batch's ages make them.

`--baseline DIR` builds DIR's `chatfleet/csrc/decode_step.cpp` as a second extension in the same
process and alternates the two call by call on the same inputs, so drift of a shared machine
falls on both alike; it also reports whether they return the same bits. Where this process may
use AMX tiles, this tree's call with its matmuls on tiles ("amx-int8") is alternated with them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from attention_memory import git_head, this_and_baseline
from decode_step_share import decoding_engine
from offline_throughput import cpu_info

from chatfleet.model import kernels
from chatfleet.model.fused_decode import FusedDecode
from chatfleet.model.matmul_plan import ALL_BUCKETS


def captured_call(rows: int, context: int) -> tuple[Any, dict[str, Any]]:
    """The model, and the inputs of one fused call of `rows` decodes at about `context` tokens."""
    engine = decoding_engine(context, rows, steps=4, batch_invariant=True)
    model = engine.runner.model
    fused: FusedDecode | None = model.fused_decode
    if fused is None:
        raise SystemExit("no fused decode step here (int8 weights and the VNNI kernel)")
    seen: dict[str, Any] = {}
    run = fused.layers.run

    def spy(h, kv_caches, cos, sin, slots, tables, seq_lens, scale, threads):
        seen.update(h=h.clone(), kv_caches=kv_caches, cos=cos, sin=sin, slots=slots)
        seen.update(tables=tables, seq_lens=seq_lens, scale=scale)
        return run(h, kv_caches, cos, sin, slots, tables, seq_lens, scale, threads)

    fused.layers = _Spied(spy)
    engine.step()
    fused.layers = _Spied(run)
    return model, seen


class _Spied:
    """Stands in for the kernel's bound layers (a C++ object, whose methods cannot be set)."""

    def __init__(self, run: Any) -> None:
        self.run = run


def layer_tensors(model: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    weights: list[torch.Tensor] = []
    norms: list[torch.Tensor] = []
    for layer in model.layers:
        for linear in (layer.qkv, layer.o, layer.gate_up, layer.down):
            weights += [linear.packed, linear.scales, linear.zeros]
        norms += [layer.attn_norm.data, layer.ffn_norm.data]
    return weights, norms


def caller(module: Any, model: Any, tile_mask: int = 0) -> Any:
    """A function running `module`'s fused call on captured inputs (its matmuls on AMX tiles
    for the row buckets of `tile_mask`); a tree from before the weights were bound once takes
    them with every call."""
    weights, norms = layer_tensors(model)
    heads, eps, threads = model.config.num_heads, model.config.rms_norm_eps, kernels.num_threads()
    if hasattr(module, "DecodeLayers"):
        layers = module.DecodeLayers(weights, norms, heads, eps)
        if tile_mask:
            layers.set_tiles([tile_mask] * (len(weights) // 3), False)

        def call(a: dict) -> torch.Tensor:
            return layers.run(
                a["h"], a["kv_caches"], a["cos"], a["sin"], a["slots"], a["tables"],
                a["seq_lens"], a["scale"], threads,
            )  # fmt: skip

        return call

    def call_unbound(a: dict) -> torch.Tensor:
        return module.decode_layers(
            a["h"], weights, norms, a["kv_caches"], a["cos"], a["sin"], a["slots"], a["tables"],
            a["seq_lens"], heads, eps, a["scale"], threads,
        )  # fmt: skip

    return call_unbound


def measure(modules: dict[str, Any], rows: int, context: int, calls: int, spread: bool) -> dict:
    model, inputs = captured_call(rows, context)
    if spread:
        lens = inputs["seq_lens"]
        inputs["seq_lens"] = (lens * torch.linspace(1.0, 0.25, len(lens))).long().clamp_min(1)
    run = {name: caller(module, model) for name, module in modules.items()}
    if kernels.amx_tiles():  # this tree's call with its matmuls on tiles
        run["amx-int8"] = caller(modules["current"], model, ALL_BUCKETS)
    outs = {name: call(inputs) for name, call in run.items()}  # also the warm-up
    weight_bytes = sum(t.numel() * t.element_size() for t in layer_tensors(model)[0])
    buffer = torch.ones(2**30 // 4)  # the plain read: as many bytes, a new stretch each time
    chunk = weight_bytes // 4
    times: dict[str, list[float]] = {name: [] for name in [*run, "read"]}
    for i in range(calls if rows < 64 else max(10, calls // 10)):
        # Each in turn first: the call right after the plain read finds less of its weights in
        # cache, which a fixed order would charge to one of them.
        order = list(run.items())
        for name, call in order if i % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            call(inputs)
            times[name].append(time.perf_counter() - start)
        offset = i % (buffer.numel() // chunk) * chunk
        start = time.perf_counter()
        buffer[offset : offset + chunk].sum()
        times["read"].append(time.perf_counter() - start)
    result: dict[str, Any] = {"rows": rows, "context": context, "spread": spread}
    result["weight_mb"] = weight_bytes / 1e6
    for name, ts in times.items():
        ms = statistics.median(ts) * 1e3
        result[name] = {"median_ms": round(ms, 3), "gb_s": round(weight_bytes / ms / 1e6, 1)}
    for other in (name for name in run if name != "current"):
        ratio = result["current"]["median_ms"] / result[other]["median_ms"]
        result[f"ratio_to_{other}"] = round(ratio, 3)
        result[f"same_output_as_{other}"] = bool(torch.equal(outs["current"], outs[other]))
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", default="1,4,64", help="decodes in a step")
    p.add_argument("--contexts", default="300,1000")
    p.add_argument("--calls", type=int, default=200, help="calls of each kernel (a tenth at 64)")
    p.add_argument(
        "--spread",
        action="store_true",
        help="the step's requests at contexts from the full one down to a quarter, oldest first",
    )
    p.add_argument("--baseline", help="a source tree to compare against, e.g. a git worktree")
    p.add_argument("--output", default="results/decode_kernel.json")
    args = p.parse_args()
    modules = this_and_baseline("decode_step", args.baseline)
    results = []
    for context in (int(c) for c in args.contexts.split(",")):
        for rows in (int(r) for r in args.rows.split(",")):
            results.append(measure(modules, rows, context, args.calls, args.spread))
            print(json.dumps(results[-1]))
    report = {"cpu": cpu_info(), "baseline": args.baseline and git_head(args.baseline)}
    report["results"] = results
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
