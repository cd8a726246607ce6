"""The paged attention kernel of this tree against the one of an earlier commit, in one process
(alternating, best of three), on the same random fp16 cache.

    .venv/bin/python benchmarks/attention_ab.py --base a57d14a \
        --cases 4:600:1,64:400:1,1:600:70,1:800:128,1:1500:512 --output ab.json

A case is BATCH:CONTEXT:ROWS: BATCH requests with CONTEXT cached keys each and ROWS query rows
each (1 = a decode, more = a prefill chunk, each row with its own causal length).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.cpp_extension import load

from chatfleet.model import kernels

HEADS, KV_HEADS, DIM, BLOCK, NUM_BLOCKS = 9, 3, 64, 16, 3000  # SmolLM2-135M's attention
CSRC = "chatfleet/csrc"


def build_base(rev: str, workdir: Path):
    """Builds the paged attention op of commit `rev` (its .cpp and headers) under another name."""
    listed = subprocess.run(
        ["git", "ls-tree", "--name-only", rev, f"{CSRC}/"], capture_output=True, text=True
    )
    for path in listed.stdout.split():
        blob = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, check=True)
        (workdir / Path(path).name).write_bytes(blob.stdout)
    return load(
        name=f"chatfleet_paged_attention_{rev}",
        sources=[str(workdir / "paged_attention.cpp")],
        extra_cflags=["-O3", "-march=native", "-ffp-contract=off", "-fopenmp"],
        extra_ldflags=["-fopenmp"],
    )


def best_us(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        best = min(best, (time.perf_counter() - start) / repeats * 1e6)
    return best


def one_case(base, head, batch: int, context: int, rows: int, threads: int) -> dict:
    kc = torch.randn(NUM_BLOCKS, BLOCK, KV_HEADS, DIM).half()
    vc = torch.randn(NUM_BLOCKS, BLOCK, KV_HEADS, DIM).half()
    per_request = (context + rows + BLOCK - 1) // BLOCK
    tables = torch.stack([torch.randperm(NUM_BLOCKS)[:per_request] for _ in range(batch)])
    q = torch.randn(batch * rows, HEADS, DIM)
    row_starts = torch.arange(batch + 1) * rows
    lens = torch.cat([context + 1 + torch.arange(rows) for _ in range(batch)])
    args = (q, kc, vc, tables, row_starts, lens, DIM**-0.5, threads)
    repeats = max(5, int(2e6 / (batch * context * rows * KV_HEADS + 1e4)))
    base_us = best_us(lambda: base.paged_attention(*args), repeats)
    head_us = best_us(lambda: head.paged_attention(*args), repeats)
    diff = float((base.paged_attention(*args) - head.paged_attention(*args)).abs().max())
    return {
        "batch": batch,
        "context": context,
        "rows": rows,
        "base_us": base_us,
        "head_us": head_us,
        "speedup": base_us / head_us,
        "max_abs_diff": diff,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="git revision to compare against")
    p.add_argument("--cases", default="1:600:1,4:600:1,64:400:1,1:600:70,1:800:128,1:1500:512")
    p.add_argument("--num-threads", type=int, default=torch.get_num_threads())
    p.add_argument("--output", default=None)
    args = p.parse_args()
    kernels.set_num_threads(args.num_threads)
    head = kernels.load("paged_attention")
    if head is None:
        raise SystemExit("the paged attention kernel does not build here")
    with tempfile.TemporaryDirectory() as tmp:
        base = build_base(args.base, Path(tmp))
    rows = []
    for case in args.cases.split(","):
        batch, context, nrows = (int(x) for x in case.split(":"))
        row = one_case(base, head, batch, context, nrows, args.num_threads)
        rows.append(row)
        print(
            f"{batch:3d} x {nrows:4d} rows on {context:5d} keys: base {row['base_us']:8.1f} us"
            f"  head {row['head_us']:8.1f} us  x{row['speedup']:.2f}",
            flush=True,
        )
    if args.output:
        out = {"base": args.base, "num_threads": args.num_threads, "cases": rows}
        Path(args.output).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
