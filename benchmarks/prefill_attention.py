"""Prefill-chunk attention on the paged fp16 cache: SDPA over gathered keys vs the paged decode
kernel with one row per query token. Decides MAX_PAGED_QUERY_LEN in attention/cpu_paged.py.

    .venv/bin/python benchmarks/prefill_attention.py --output docs/results/prefill_attention.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from chatfleet.model import kernels

HEADS, KV_HEADS, DIM, BLOCK, NUM_BLOCKS = 9, 3, 64, 16, 2000  # SmolLM2-135M's attention


def time_ms(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def one_case(kernel, query_len: int, context_len: int, repeats: int) -> dict:
    kc = torch.randn(NUM_BLOCKS, BLOCK, KV_HEADS, DIM).half()
    vc = torch.randn(NUM_BLOCKS, BLOCK, KV_HEADS, DIM).half()
    seq_len = context_len + query_len
    table = torch.randperm(NUM_BLOCKS)[: (seq_len + BLOCK - 1) // BLOCK]
    q = torch.randn(query_len, HEADS, DIM)
    pos = torch.arange(seq_len)
    slots = table[pos // BLOCK] * BLOCK + pos % BLOCK
    mask = pos[None, :] <= (context_len + torch.arange(query_len))[:, None]  # [Q, S]
    scale = DIM**-0.5

    def sdpa() -> torch.Tensor:  # what SdpaAttention does for one prefill chunk
        k = kc.view(-1, KV_HEADS, DIM)[slots].transpose(0, 1).unsqueeze(0).float()
        v = vc.view(-1, KV_HEADS, DIM)[slots].transpose(0, 1).unsqueeze(0).float()
        qi = q.transpose(0, 1).unsqueeze(0)
        o = F.scaled_dot_product_attention(qi, k, v, attn_mask=mask, scale=scale, enable_gqa=True)
        return o[0].transpose(0, 1).reshape(query_len, -1)

    tables = table[None, :].contiguous()
    row_starts = torch.tensor([0, query_len])
    lens = context_len + 1 + torch.arange(query_len)

    def paged() -> torch.Tensor:  # one kernel row per query token, its own causal length
        out = kernel.paged_attention(
            q, kc, vc, tables, row_starts, lens, scale, kernels.num_threads()
        )
        return out.reshape(query_len, -1)

    return {
        "query_len": query_len,
        "context_len": context_len,
        "sdpa_ms": time_ms(sdpa, repeats),
        "paged_rows_ms": time_ms(paged, repeats),
        "max_abs_diff": float((sdpa() - paged()).abs().max()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="16:800,48:800,128:800,256:256,512:1500")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--num-threads", type=int, default=torch.get_num_threads())
    p.add_argument("--output", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.num_threads)
    kernels.set_num_threads(args.num_threads)
    kernel = kernels.load("paged_attention")
    if kernel is None:
        raise SystemExit("the paged attention kernel does not build here")
    rows = []
    for case in args.cases.split(","):
        query_len, context_len = (int(x) for x in case.split(":"))
        row = one_case(kernel, query_len, context_len, args.repeats)
        rows.append(row)
        print(
            f"{query_len:4d} new on {context_len:5d} cached: sdpa {row['sdpa_ms']:6.2f} ms"
            f"  paged rows {row['paged_rows_ms']:6.2f} ms per layer"
        )
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"num_threads": args.num_threads, "cases": rows}, f, indent=1)


if __name__ == "__main__":
    main()
