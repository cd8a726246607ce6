"""What grammars cost the engine at C concurrent streams, without HTTP noise: the same batch
of prompts decoded with a JSON schema per request and without, alternately, on this CPU.

For each concurrency C and repeat: C chat prompts asking for one of the ten schemas of
chatfleet/bench/json_schemas.py (round robin) are decoded with their schema's grammar
(temperature 0.8, a seed per request); then the same prompts without a grammar, each
generating exactly as many tokens as its constrained run did (ignore_eos), so both sides do
the same model work and differ only by the masks. Output tok/s per side and the ratio of each
pair are recorded; the pooled ratio is total constrained tokens/s over total plain tokens/s.
The first pair is a warm-up and is not counted.

    .venv/bin/python benchmarks/grammar_decode_cost.py --out docs/results/grammar_decode_cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

from offline_throughput import cpu_info

from chatfleet import LLM, SamplingParams
from chatfleet.bench.json_schemas import SCHEMAS
from chatfleet.config.engine_config import CacheConfig, SchedulerConfig
from chatfleet.sampling_params import Grammar
from chatfleet.structured.grammars import json_schema_grammar


def make_llm(concurrency: int, max_tokens: int, num_threads: int) -> LLM:
    block_size = CacheConfig().block_size
    # Enough KV blocks that no request is preempted: both sides run the same schedule.
    num_blocks = (concurrency + 1) * -(-(256 + max_tokens) // block_size) + 16
    return LLM(
        model=None,
        num_threads=num_threads,
        cache=CacheConfig(num_blocks_override=num_blocks),
        scheduler=SchedulerConfig(max_num_seqs=concurrency, max_num_batched_tokens=512),
    )


def prompts_for(llm: LLM, concurrency: int, repeat: int) -> list[list[int]]:
    """Distinct prompts per request and repeat, so no run reuses another's prefix cache."""
    tokenizer = llm.engine.tokenizer
    out = []
    for i in range(concurrency):
        case = SCHEMAS[i % len(SCHEMAS)]
        text = f"{case.prompt} (request {repeat}-{i})"
        out.append(tokenizer.apply_chat_template([{"role": "user", "content": text}]))
    return out


def decode(llm: LLM, prompts: list[list[int]], params: list[SamplingParams]) -> tuple[float, list]:
    """All requests queued at once and stepped to the end: (seconds, output lengths)."""
    engine = llm.engine
    ids = [f"r{time.monotonic_ns()}-{i}" for i in range(len(prompts))]
    lengths = dict.fromkeys(ids, 0)
    start = time.perf_counter()
    for request_id, prompt, p in zip(ids, prompts, params, strict=True):
        engine.add_request(request_id, prompt, p)
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                lengths[out.request_id] = len(out.outputs[0].token_ids)
    return time.perf_counter() - start, [lengths[i] for i in ids]


def one_pair(llm: LLM, concurrency: int, repeat: int, max_tokens: int) -> dict[str, Any]:
    prompts = prompts_for(llm, concurrency, repeat)
    constrained = [
        SamplingParams(
            temperature=0.8,
            seed=1000 * repeat + i,
            max_tokens=max_tokens,
            grammar=Grammar(json_schema_grammar(SCHEMAS[i % len(SCHEMAS)].schema, True), "x"),
        )
        for i in range(concurrency)
    ]
    g_s, lengths = decode(llm, prompts, constrained)
    plain = [
        SamplingParams(temperature=0.8, seed=1000 * repeat + i, max_tokens=n, ignore_eos=True)
        for i, n in enumerate(lengths)
    ]
    p_s, plain_lengths = decode(llm, prompts, plain)
    assert plain_lengths == lengths, "the plain side must generate the same lengths"
    num_out = sum(lengths)
    return {
        "repeat": repeat,
        "output_tokens": num_out,
        "json_schema_s": g_s,
        "plain_s": p_s,
        "json_schema_tok_s": num_out / g_s,
        "plain_tok_s": num_out / p_s,
        "ratio": p_s / g_s,
    }


def run(concurrency: int, args: argparse.Namespace) -> dict[str, Any]:
    llm = make_llm(concurrency, args.max_tokens, args.num_threads)
    one_pair(llm, concurrency, 0, args.max_tokens)  # warm-up: compile caches, first steps
    pairs = [one_pair(llm, concurrency, r, args.max_tokens) for r in range(1, args.repeats + 1)]
    for p in pairs:
        print(
            f"C={concurrency} repeat {p['repeat']}: json-schema {p['json_schema_tok_s']:.1f} "
            f"plain {p['plain_tok_s']:.1f} tok/s, ratio {p['ratio']:.3f}",
            flush=True,
        )
    pooled = sum(p["plain_s"] for p in pairs) / sum(p["json_schema_s"] for p in pairs)
    return {
        "concurrency": concurrency,
        "pairs": pairs,
        "pooled_ratio": pooled,
        "median_ratio": statistics.median(p["ratio"] for p in pairs),
        "min_ratio": min(p["ratio"] for p in pairs),
        "max_ratio": max(p["ratio"] for p in pairs),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--concurrency", default="16,64")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--num-threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--out", default="results/grammar_decode_cost.json")
    args = p.parse_args(argv)
    results = [run(int(c), args) for c in args.concurrency.split(",")]
    report = {"machine": cpu_info(), "args": vars(args), "results": results}
    for r in results:
        print(
            f"C={r['concurrency']}: json-schema / plain throughput {r['pooled_ratio']:.3f} "
            f"pooled (pairs {r['min_ratio']:.3f}..{r['max_ratio']:.3f})"
        )
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
