"""How close the int8 kernel (VNNI) comes to what its instructions allow on this CPU.

Per row of x, 32-wide block of K and tile of 16 outputs, the kernel issues 16 VPDPBUSD (the
high and low bytes of x's 16-bit codes against 8 vectors of codes) and three multiplies or
FMAs (the block's scale, x's scale, the zero point). On CPUs where the FMAs share ports with
VPDPBUSD (Zen 4), that mix, not memory, is the bound of a many-row matmul. This script times
that instruction mix alone (a register-only loop), and the real op on one thread on the
default model's first layer and head (min of rounds: the bound is what the core can do, not
what a shared machine lets it do on average), both in cycles per (row, block, tile), with
the clock taken from a chain of dependent adds (the op's ratio to the mix does not depend on
it: both run 512-bit code at the same clock). Where the process may use AMX tiles, the
tile pass is timed in the same units. Writes JSON.

    .venv/bin/python benchmarks/int8_kernel_bound.py --output docs/results/int8_kernel_bound.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from offline_throughput import cpu_info
from prefill_matmuls import call, cases
from torch.utils.cpp_extension import load_inline

from chatfleet import LLM
from chatfleet.model import kernels
from chatfleet.model.matmul_plan import ALL_BUCKETS

# Register-only loops, by kind: 0 is 16 VPDPBUSD on 12 accumulators, 1 adds the kernel's three
# FMA-port operations, 2 is 16 dependent adds (a cycle each on every x86 core this runs on).
_LOOPS = r"""
#include <torch/extension.h>
#include <chrono>
#define DP(r) "vpdpbusd %%zmm30, %%zmm31, %%zmm" #r "\n"
#define FP "vmulps %%zmm28, %%zmm29, %%zmm12\n vfmadd231ps %%zmm28, %%zmm29, %%zmm13\n" \
           "vfmadd231ps %%zmm28, %%zmm29, %%zmm14\n"
#define DOTS DP(0) DP(1) DP(2) DP(3) DP(4) DP(5) DP(6) DP(7) DP(8) DP(9) DP(10) DP(11) \
             DP(0) DP(1) DP(2) DP(3)
#define ADD "add $1, %0\n"
#define CLOBBER "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", \
                "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14"
double loop(int64_t kind, int64_t iters) {
  const auto start = std::chrono::steady_clock::now();
  int64_t n = 0;
  for (int64_t i = 0; i < iters; ++i) {
    if (kind == 0) __asm__ volatile(DOTS ::: CLOBBER);
    else if (kind == 1) __asm__ volatile(DOTS FP ::: CLOBBER);
    else __asm__ volatile(ADD ADD ADD ADD ADD ADD ADD ADD ADD ADD ADD ADD ADD ADD ADD ADD
                          : "+r"(n));
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() +
         0.0 * static_cast<double>(n);
}
"""


def loop_cycles(ext: Any, iters: int, rounds: int) -> tuple[float, dict[str, float]]:
    """The clock (Hz), and the cycles an iteration of the dot-only and the kernel-mix loop take."""
    best = {kind: float("inf") for kind in range(3)}
    for _ in range(rounds):
        for kind in best:
            best[kind] = min(best[kind], ext.loop(kind, iters))
    hz = 16 * iters / best[2]
    return hz, {
        "clock_ghz": round(hz / 1e9, 3),
        "dot_only": round(best[0] / iters * hz, 2),
        "kernel_mix": round(best[1] / iters * hz, 2),
    }


def op_cycles(model: Any, rows: int, rounds: int, hz: float, tiles: bool) -> list[dict]:
    """The qlinear op (on the threads set): cycles per (row, block, tile), min over rounds."""
    qlinear = kernels.load("qlinear")
    assert qlinear is not None
    extra = {"tile_mask": ALL_BUCKETS} if tiles else {}
    out = []
    for name, linear, args in cases(model, rows):
        call(qlinear, linear, args, **extra)
        best = float("inf")
        for _ in range(rounds):
            start = time.perf_counter()
            call(qlinear, linear, args, **extra)
            best = min(best, time.perf_counter() - start)
        units = rows * (linear.in_features // 32) * (linear.out_features // 16)
        entry = {"matmul": name, "rows": rows, "path": "amx-int8" if tiles else "vnni"}
        entry.update({"ms": round(best * 1e3, 3), "cycles": round(best * hz / units, 2)})
        print(json.dumps(entry), flush=True)
        out.append(entry)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", default="64,512")
    p.add_argument("--rounds", type=int, default=21)
    p.add_argument("--iters", type=int, default=2_000_000)
    p.add_argument("--output", default="results/int8_kernel_bound.json")
    args = p.parse_args()
    if not kernels.cpu_has("avx512_vnni"):
        raise SystemExit("the int8 kernel needs AVX-512 VNNI")
    ext = load_inline("int8_kernel_bound_loops", _LOOPS, functions=["loop"], extra_cflags=["-O2"])
    hz, loops = loop_cycles(ext, args.iters, 7)
    print(json.dumps(loops), flush=True)
    # One thread (the engine sets the kernels' count): a core's cycles, where the other core
    # may be busy with someone else's work.
    model = LLM(num_threads=1).engine.runner.model
    results = []
    for rows in (int(r) for r in args.rows.split(",")):
        results += op_cycles(model, rows, args.rounds, hz, tiles=False)
        if kernels.amx_tiles():
            results += op_cycles(model, rows, args.rounds, hz, tiles=True)
    report = {"cpu": cpu_info(), "loops": loops, "results": results}
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
