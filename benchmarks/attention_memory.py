"""Decode attention at the sizes of a 64-stream step, where the KV cache is read from memory:
the paged attention op over every layer of the default model's shape, each layer its own
cache, with each request's blocks in one run or scattered over the cache, against the
machine's streaming read bandwidth.

    .venv/bin/python benchmarks/attention_memory.py --output docs/results/attention_memory.json
    .venv/bin/python benchmarks/attention_memory.py --baseline DIR   # before/after a change

`--baseline DIR` builds DIR's `chatfleet/csrc/paged_attention.cpp` as a second extension in
the same process and alternates rounds between the two (each round one pass over all layers),
so drift of a shared machine falls on both alike; it also reports whether the two return the
same bits. Figures: median ms a pass, ns per key and kv head on one thread, and the K/V bytes
read per second.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import torch
from offline_throughput import cpu_info, measure_bandwidth_gb_s

from chatfleet.model import kernels
from chatfleet.model.attention import kv_format

# The default model's (SmolLM2-135M) attention: 30 layers, 9 query heads on 3 kv heads of 64.
LAYERS, HEADS, KV_HEADS, HEAD_DIM, BLOCK = 30, 9, 3, 64, 16
DTYPES = {"fp16": torch.float16, "int8": torch.int8}


def layer_caches(blocks: int, dtype: torch.dtype, layers: int) -> list[tuple[torch.Tensor, ...]]:
    """Each layer's K and V caches in the engine's format (int8: rotated codes and scales)."""
    gen = torch.Generator().manual_seed(0)
    caches = []
    for _ in range(layers):
        pair = []
        for _ in range(2):
            x = torch.randn(blocks, BLOCK, KV_HEADS, HEAD_DIM, generator=gen)
            pair.append(kv_format.encode(x, dtype))
        caches.append(tuple(pair))
    return caches


def run_pass(op, qs, caches, tables, row_starts, lens, threads: int) -> torch.Tensor:
    out = None
    for q, (k, v) in zip(qs, caches, strict=True):
        out = op.paged_attention(q, k, v, tables, row_starts, lens, HEAD_DIM**-0.5, threads)
    assert out is not None
    return out


def block_tables(streams: int, per_stream: int, layout: str) -> torch.Tensor:
    """`contiguous`: each request's blocks one run, as a fresh engine hands them to prompts;
    `scattered`: anywhere in the cache, as a server's are once requests come and go."""
    n = streams * per_stream
    if layout == "contiguous":
        return torch.arange(n).view(streams, per_stream)
    return torch.randperm(n, generator=torch.Generator().manual_seed(1)).view(streams, per_stream)


def measure(ops: dict, dtype_name: str, context: int, layout: str, args) -> dict:
    streams, layers = args.streams, args.layers
    per_stream = -(-context // BLOCK)
    caches = layer_caches(streams * per_stream, DTYPES[dtype_name], layers)
    tables = block_tables(streams, per_stream, layout)
    row_starts = torch.arange(streams + 1, dtype=torch.long)
    lens = torch.full((streams,), context, dtype=torch.long)
    qs = [torch.randn(streams, HEADS, HEAD_DIM) for _ in range(layers)]
    threads = torch.get_num_threads()
    times: dict[str, list[float]] = {name: [] for name in ops}
    outs = {}
    for name, op in ops.items():  # warm-up, and each one's output
        outs[name] = run_pass(op, qs, caches, tables, row_starts, lens, threads)
    for _ in range(args.rounds):
        for name, op in ops.items():
            start = time.perf_counter()
            run_pass(op, qs, caches, tables, row_starts, lens, threads)
            times[name].append(time.perf_counter() - start)
    pairs = layers * streams * context * KV_HEADS  # (key, kv head) pairs a pass reads
    head_bytes = caches[0][0][0, 0, 0].numel() * caches[0][0].element_size()
    result = {"dtype": dtype_name, "context": context, "layout": layout, "streams": streams}
    result["layers"] = layers
    for name, ts in times.items():
        med = statistics.median(ts)
        result[name] = {
            "pass_ms": round(1e3 * med, 2),
            "rounds_ms": [round(1e3 * t, 2) for t in ts],
            "ns_per_key_head_thread": round(med * threads / pairs * 1e9, 2),
            "kv_read_gb_s": round(2 * pairs * head_bytes / med / 1e9, 2),
        }
    if "baseline" in ops:
        result["ratio_to_baseline"] = round(
            result["current"]["pass_ms"] / result["baseline"]["pass_ms"], 3
        )
        result["same_output_as_baseline"] = bool(torch.equal(outs["current"], outs["baseline"]))
    return result


def this_and_baseline(name: str, baseline: str | None) -> dict[str, Any]:
    """This tree's build of kernel `name` as "current" and, with a baseline source tree, that
    tree's build of it beside it as "baseline" (another module name, so both load)."""
    modules = {"current": kernels.load(name)}
    if modules["current"] is None:
        raise SystemExit(f"the {name} kernel does not build here")
    if baseline:
        csrc = os.path.join(os.path.abspath(baseline), "chatfleet", "csrc")
        modules["baseline"] = kernels.build_from(csrc, name, f"{name}_benchmark_baseline")
    return modules


def git_head(tree: str) -> str:
    """The commit a baseline tree is at (with `+` when it has changes), or its path."""

    def git(*args: str) -> str:
        cmd = ["git", "-C", tree, *args]
        return subprocess.run(cmd, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD")
    return head + ("+" if git("status", "--porcelain") else "") if head else tree


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--contexts", default="300,1000")
    p.add_argument("--dtypes", default="fp16,int8")
    p.add_argument("--layouts", default="scattered,contiguous")
    p.add_argument("--streams", type=int, default=64)
    p.add_argument("--layers", type=int, default=LAYERS)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--baseline", help="a source tree to compare against, e.g. a git worktree")
    p.add_argument("--output", default="results/attention_memory.json")
    args = p.parse_args()
    ops = this_and_baseline("paged_attention", args.baseline)
    results = []
    for dtype_name in args.dtypes.split(","):
        for context in (int(c) for c in args.contexts.split(",")):
            for layout in args.layouts.split(","):
                results.append(measure(ops, dtype_name, context, layout, args))
            r = results[-1]
            shown = {
                k: {n: x for n, x in v.items() if n != "rounds_ms"} if isinstance(v, dict) else v
                for k, v in r.items()
            }
            print(json.dumps(shown))
    report = {
        "cpu": cpu_info(),
        "stream_read_gb_s": round(measure_bandwidth_gb_s(1.0), 1),
        "baseline": args.baseline and git_head(args.baseline),
        "results": results,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(f"streaming read {report['stream_read_gb_s']} GB/s; wrote {args.output}")


if __name__ == "__main__":
    main()
