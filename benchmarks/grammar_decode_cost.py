"""What grammars cost the engine at C concurrent streams, without HTTP noise: the same batch
of prompts decoded with a JSON schema per request and without, alternately, on this CPU.

For each concurrency C: C chat prompts asking for one of the ten schemas of
chatfleet/bench/json_schemas.py (round robin) are decoded with their schema's grammar
(temperature 0.8, a seed per request), and the same prompts without a grammar, each generating
exactly as many tokens as its constrained run does (ignore_eos), so both sides do the same
model work and differ only by the grammar. Seeded and batch-invariant, the constrained side
repeats itself token for token, so a warm-up run gives the lengths and each repeat runs both
sides, in alternating order (drift while one side runs falls on each side as often). The prefix
cache is emptied before each side, so neither reuses the other's prompts. Output tok/s per
side and the ratio of each pair are recorded; the pooled ratio is total constrained tokens/s
over total plain tokens/s.

The engine thread's time inside grammar calls (compiling, checking draws, filling refused rows'
masks, applying masks, drawing refused rows again, advancing matchers) is added up on the
constrained side: that share is what the grammar costs, free of the drift between two runs
that the ratio carries.

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
from chatfleet.model import sampler
from chatfleet.sampling_params import Grammar
from chatfleet.structured.grammars import json_schema_grammar
from chatfleet.structured.matcher import GrammarCompiler, GrammarMatcher


class GrammarClock:
    """Adds up the wall time spent inside the grammar calls the engine makes (all on its
    thread: the benchmark requests do not truncate, so no mask is filled on the worker)."""

    CALLS = (
        (GrammarCompiler, "matcher"),
        (GrammarMatcher, "allows"),
        (GrammarMatcher, "accept"),
        (sampler, "apply_bitmasks"),
        (sampler.Sampler, "_redraw"),  # the refused rows' masks, and their second draw
    )

    def __init__(self) -> None:
        self.seconds = 0.0
        self._depth = 0  # calls inside a timed call are already counted
        for owner, name in self.CALLS:
            setattr(owner, name, self._timed(getattr(owner, name)))

    def _timed(self, fn: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            self._depth += 1
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self.seconds += time.perf_counter() - start

        return timed


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


def prompts_for(llm: LLM, concurrency: int) -> list[list[int]]:
    tokenizer = llm.engine.tokenizer
    out = []
    for i in range(concurrency):
        case = SCHEMAS[i % len(SCHEMAS)]
        text = f"{case.prompt} (request {i})"
        out.append(tokenizer.apply_chat_template([{"role": "user", "content": text}]))
    return out


def decode(llm: LLM, prompts: list[list[int]], params: list[SamplingParams]) -> tuple[float, list]:
    """All requests queued at once and stepped to the end: (seconds, output lengths)."""
    engine = llm.engine
    engine.kv_cache_manager.pool.reset_prefix_cache()
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


def constrained_params(concurrency: int, max_tokens: int) -> list[SamplingParams]:
    return [
        SamplingParams(
            temperature=0.8,
            seed=i,
            max_tokens=max_tokens,
            grammar=Grammar(json_schema_grammar(SCHEMAS[i % len(SCHEMAS)].schema, True), "x"),
        )
        for i in range(concurrency)
    ]


def one_pair(
    llm: LLM,
    prompts: list[list[int]],
    lengths: list[int],
    repeat: int,
    max_tokens: int,
    clock: GrammarClock,
) -> dict[str, Any]:
    constrained = constrained_params(len(prompts), max_tokens)
    plain = [
        SamplingParams(temperature=0.8, seed=i, max_tokens=n, ignore_eos=True)
        for i, n in enumerate(lengths)
    ]
    sides: dict[str, float] = {}
    for side in ("json_schema", "plain") if repeat % 2 else ("plain", "json_schema"):
        clock.seconds = 0.0
        seconds, got = decode(llm, prompts, constrained if side == "json_schema" else plain)
        assert got == lengths, f"the {side} side must generate the warm-up's lengths"
        sides[side], sides[f"{side}_grammar_s"] = seconds, clock.seconds
    num_out = sum(lengths)
    g_s, p_s = sides["json_schema"], sides["plain"]
    return {
        "repeat": repeat,
        "first": "json_schema" if repeat % 2 else "plain",
        "output_tokens": num_out,
        "json_schema_s": g_s,
        "plain_s": p_s,
        "json_schema_tok_s": num_out / g_s,
        "plain_tok_s": num_out / p_s,
        "ratio": p_s / g_s,
        "grammar_calls_s": sides["json_schema_grammar_s"],
        "grammar_share": sides["json_schema_grammar_s"] / g_s,
    }


def run(concurrency: int, args: argparse.Namespace, clock: GrammarClock) -> dict[str, Any]:
    llm = make_llm(concurrency, args.max_tokens, args.num_threads)
    prompts = prompts_for(llm, concurrency)
    # Warm-up (caches, first steps), and the lengths both sides generate.
    _, lengths = decode(llm, prompts, constrained_params(concurrency, args.max_tokens))
    pairs = []
    for r in range(1, args.repeats + 1):
        pairs.append(p := one_pair(llm, prompts, lengths, r, args.max_tokens, clock))
        print(
            f"C={concurrency} repeat {p['repeat']}: json-schema {p['json_schema_tok_s']:.1f} "
            f"plain {p['plain_tok_s']:.1f} tok/s, ratio {p['ratio']:.3f}, "
            f"grammar calls {100 * p['grammar_share']:.1f}% of the constrained run",
            flush=True,
        )
    constrained_s = sum(p["json_schema_s"] for p in pairs)
    pooled = sum(p["plain_s"] for p in pairs) / constrained_s
    return {
        "concurrency": concurrency,
        "pairs": pairs,
        "pooled_ratio": pooled,
        "grammar_share": sum(p["grammar_calls_s"] for p in pairs) / constrained_s,
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
    clock = GrammarClock()
    results = [run(int(c), args, clock) for c in args.concurrency.split(",")]
    report = {"machine": cpu_info(), "args": vars(args), "results": results}
    for r in results:
        print(
            f"C={r['concurrency']}: json-schema / plain throughput {r['pooled_ratio']:.3f} "
            f"pooled (pairs {r['min_ratio']:.3f}..{r['max_ratio']:.3f}); grammar calls "
            f"{100 * r['grammar_share']:.1f}% of the constrained runs' time"
        )
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
