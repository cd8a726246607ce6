"""The int8 KV cache (`--kv-cache-dtype int8`) against the default fp16 one: decode step time at
64 streams, side by side in one process, and the real model's accuracy against an fp32 cache.

    .venv/bin/python benchmarks/kv_cache_int8.py --output docs/results/kv_cache_int8.json

Speed: for each context length, two engines (fp16 and int8 caches, otherwise the same) fill 64
requests with synthetic prompts of that length and bring them all to decode; then rounds of
`--steps-per-round` decode steps alternate between them, so drift of a shared machine falls on
both alike: the figures are the medians of the rounds and of the per-round ratios.
Accuracy (chatfleet/bench/agreement.py): 8 chat prompts x 64 greedy tokens with int8 and with
fp16, each against an fp32 cache (same weights): tokens agreeing before the first difference,
and the largest logprob difference over them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

from decode_step_share import decoding_engine
from offline_throughput import cpu_info

from chatfleet import LLM
from chatfleet.bench.agreement import greedy_agreement
from chatfleet.config.engine_config import CacheConfig


def speed(context: int, args: argparse.Namespace) -> dict:
    total = args.rounds * args.steps_per_round
    engines = {
        kv: decoding_engine(context, args.streams, total, not args.no_batch_invariant, kv)
        for kv in ("fp16", "int8")
    }
    for engine in engines.values():  # warm-up
        for _ in range(3):
            engine.step()
    rounds: dict[str, list[float]] = {kv: [] for kv in engines}
    for _ in range(args.rounds):
        for kv, engine in engines.items():
            start = time.perf_counter()
            for _ in range(args.steps_per_round):
                engine.step()
            rounds[kv].append((time.perf_counter() - start) / args.steps_per_round * 1e3)
    ratios = [a / b for a, b in zip(rounds["int8"], rounds["fp16"], strict=True)]
    return {
        "context": context,
        "streams": args.streams,
        "batch_invariant": not args.no_batch_invariant,
        "step_ms_fp16": round(statistics.median(rounds["fp16"]), 2),
        "step_ms_int8": round(statistics.median(rounds["int8"]), 2),
        "int8_over_fp16": round(statistics.median(ratios), 3),
        "round_ratios": [round(r, 3) for r in ratios],
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--contexts", default="300,1000")
    p.add_argument("--streams", type=int, default=64)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--steps-per-round", type=int, default=5)
    p.add_argument("--no-batch-invariant", action="store_true")
    p.add_argument("--output", default="results/kv_cache_int8.json")
    args = p.parse_args()
    runs = []
    for context in (int(c) for c in args.contexts.split(",")):
        runs.append(speed(context, args))
        print(json.dumps(runs[-1]), flush=True)
    fp32 = LLM(cache=CacheConfig(kv_cache_memory_bytes=256 << 20, kv_cache_dtype="fp32"))
    quality = []
    for kv in ("fp16", "int8"):
        llm = LLM(cache=CacheConfig(kv_cache_memory_bytes=256 << 20, kv_cache_dtype=kv))
        check = greedy_agreement(llm, fp32, max_tokens=64)
        quality.append({"kv_cache_dtype": kv} | dataclasses.asdict(check))
    print(json.dumps(quality), flush=True)
    out = {"machine": cpu_info(), "speed": runs, "accuracy_vs_fp32_cache": quality}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
