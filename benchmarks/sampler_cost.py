"""The sampler's cost per step on this CPU, for B rows of the default model's vocabulary: at
temperature > 0, the sampler (one uniform per row, the inverse CDF walked by a C++ kernel),
the same draw through torch's division, softmax and cumsum (the sampler's path where the
kernel does not build), and an exponential race over the vocabulary (one draw per token id);
with top-p 0.9, the kernel against torch's sort; greedy, numpy's argmax (what the sampler
does) against torch's.

    .venv/bin/python benchmarks/sampler_cost.py --out docs/results/sampler_cost/sampler_cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import replace

import torch
from offline_throughput import cpu_info

from chatfleet import SamplingParams
from chatfleet.model.sampler import Sampler, SamplingRow, apply_truncation, sample_inverse_cdf

VOCAB = 49152  # SmolLM2's


def exponential_race(logits: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    probs = (logits / 0.8).softmax(dim=-1)
    noise = torch.empty_like(probs)
    for j, g in enumerate(generators):
        noise[j].exponential_(generator=g)
    return (probs / noise).argmax(dim=-1)


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def one_batch(b: int, params: SamplingParams, repeats: int) -> dict[str, float]:
    logits = torch.randn(b, VOCAB, generator=torch.Generator().manual_seed(b))
    gens = [torch.Generator().manual_seed(i) for i in range(b)]
    rows = [SamplingRow(params, [1], [], g, []) for g in gens]
    top_p = [SamplingRow(replace(params, top_p=0.9), [1], [], g, []) for g in gens]
    sampler = Sampler()
    every = list(range(b))
    temps = torch.full((b,), params.temperature)

    def torch_inverse_cdf(truncated: bool = False) -> torch.Tensor:
        uniforms = torch.cat([torch.rand(1, dtype=torch.float64, generator=g) for g in gens])
        scaled = logits[every] / temps[:, None]
        if truncated:
            scaled = apply_truncation(scaled, [r.params for r in top_p])
        return sample_inverse_cdf(scaled.softmax(dim=-1), uniforms)

    return {
        "sampler_ms": median_ms(lambda: sampler(logits, rows, gens[0]), repeats),
        "torch_inverse_cdf_ms": median_ms(torch_inverse_cdf, repeats),
        "exponential_race_ms": median_ms(lambda: exponential_race(logits, gens), repeats),
        "sampler_top_p_ms": median_ms(lambda: sampler(logits, top_p, gens[0]), repeats),
        "torch_top_p_ms": median_ms(lambda: torch_inverse_cdf(truncated=True), repeats),
    }


def greedy_batch(b: int, repeats: int) -> tuple[float, float]:
    logits = torch.randn(b, VOCAB, generator=torch.Generator().manual_seed(b))
    rows = [SamplingRow(SamplingParams(temperature=0), [1], [], None, [])] * b
    sampler = Sampler()
    now = median_ms(lambda: sampler(logits, rows, torch.Generator()), repeats)
    every = list(range(b))
    return now, median_ms(lambda: logits[every].argmax(dim=-1).tolist(), repeats)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batches", default="1,16,64")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--out", default="results/sampler_cost.json")
    args = p.parse_args()
    params = SamplingParams(temperature=0.8, seed=1, max_tokens=16)
    results = []
    for b in (int(x) for x in args.batches.split(",")):
        result = {"batch": b, **one_batch(b, params, args.repeats)}
        result["greedy_ms"], result["torch_argmax_ms"] = greedy_batch(b, args.repeats)
        results.append(result)
        print(json.dumps({k: round(v, 3) for k, v in result.items()}))
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(
            {"machine": cpu_info(), "threads": torch.get_num_threads(), "results": results},
            f,
            indent=2,
        )


if __name__ == "__main__":
    main()
