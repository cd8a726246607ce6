"""Which weight format is fastest for this model's matmuls on this CPU, at batch 1/64/256.

Times one decode step's worth of matmuls (30 layers of fused qkv, o, gate_up, down, plus the
lm_head) for fp32, bf16, int8 weight-only (`_weight_int8pack_mm`), W8A8 dynamic int8
(`_int_mm` with per-token activation scales), int4 weight-only (`_weight_int4pack_mm_for_cpu`)
and chatfleet's own int8 format (csrc/qlinear.cpp: 8-bit block weights, 16-bit block
activations, VNNI). Weights are reused across calls, so figures are
compute-side (cache-warm); the offline benchmark gives the memory-bound end-to-end view.

    .venv/bin/python benchmarks/matmul_formats.py --output results/matmul_formats.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from chatfleet.model.linear import BlockInt8Linear

SHAPES = {"qkv": (960, 576), "o": (576, 576), "gate_up": (3072, 576), "down": (576, 1536)}
LM_HEAD = (49152, 576)
NUM_LAYERS = 30


def timed_ms(fn, budget_s: float = 0.3, max_iters: int = 20) -> float:
    fn()
    start, iters = time.perf_counter(), 0
    while iters < max_iters and (iters == 0 or time.perf_counter() - start < budget_s):
        fn()
        iters += 1
    return (time.perf_counter() - start) / iters * 1e3


def quantize_rows_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: x ~= q * scale, scale [rows, 1]."""
    scale = x.abs().amax(dim=-1, keepdim=True).clamp_(min=1e-12) / 127.0
    return torch.round(x / scale).to(torch.int8), scale


def format_fns(w: torch.Tensor, x: torch.Tensor) -> dict:
    n, k = w.shape
    wb, xb = w.bfloat16(), x.bfloat16()
    q8, s8 = quantize_rows_int8(w)
    s8 = s8.reshape(-1)
    w4 = torch._convert_weight_to_int4pack_for_cpu(
        torch.randint(0, 16, (n, k), dtype=torch.int32), 1
    )
    sz = torch.randn(k // 32, n, 2)
    block_int8 = BlockInt8Linear(w)

    def w8a8():
        xq, xs = quantize_rows_int8(x)
        return torch._int_mm(xq, q8.t()).float().mul_(xs).mul_(s8)

    return {
        "fp32": lambda: torch.nn.functional.linear(x, w),
        "bf16": lambda: torch.nn.functional.linear(xb, wb),
        "int8_weight_only_bf16": lambda: torch._weight_int8pack_mm(xb, q8, s8.bfloat16()),
        "int8_w8a8": w8a8,
        "int4_weight_only_fp32": lambda: torch._weight_int4pack_mm_for_cpu(x, w4, 32, sz),
        "int8_block_vnni": lambda: block_int8(x),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batches", default="1,64,256")
    p.add_argument("--output", default="results/matmul_formats.json")
    args = p.parse_args()
    torch.manual_seed(0)
    report: dict = {
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "step_ms": {},
    }
    for batch in (int(b) for b in args.batches.split(",")):
        totals: dict[str, float] = {}
        for name, (n, k) in [*SHAPES.items(), ("lm_head", LM_HEAD)]:
            w, x = torch.randn(n, k) / k**0.5, torch.randn(batch, k)
            repeat = 1 if name == "lm_head" else NUM_LAYERS
            for fmt, fn in format_fns(w, x).items():
                totals[fmt] = totals.get(fmt, 0.0) + timed_ms(fn) * repeat
        report["step_ms"][batch] = {f: round(v, 2) for f, v in totals.items()}
        print(batch, report["step_ms"][batch], flush=True)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
