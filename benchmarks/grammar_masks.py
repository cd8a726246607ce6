"""Per-step cost of grammar token masks (llguidance, chatfleet's grammar library), on this CPU.

Each of B streams walks the tokens of a valid instance of one of ten JSON schemas
(chatfleet/bench/json_schemas.py, round robin) through a matcher: per step, every stream's
mask is filled for the whole batch (one batched call), applied to [B, vocab] logits, and each
stream's next token accepted. A stream that reaches its end starts again. Every walked token
must be allowed by its mask (else the run fails).

    .venv/bin/python benchmarks/grammar_masks.py --out docs/results/grammar_masks.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from offline_throughput import cpu_info

from chatfleet.bench.json_schemas import SCHEMAS
from chatfleet.model.sampler import apply_bitmasks
from chatfleet.modelfile.tokenizer import Tokenizer

SEPARATORS = (", ", ": ")  # what the server's grammars emit: no free whitespace


@dataclass
class Backend:
    """The grammar library behind the calls a step makes: compile, new matcher, fill a batch,
    accept a batch, reset."""

    name: str
    compile: Callable[[dict[str, Any]], Any]
    matcher: Callable[[Any], Any]
    fill: Callable[[list[Any], torch.Tensor], None]
    accept: Callable[[list[Any], list[int]], list[bool]]
    reset: Callable[[Any], None]


def llguidance_backend(tok: Tokenizer, threads: int) -> Backend:
    import llguidance
    import llguidance.torch

    lltok = llguidance.LLTokenizer(tok.to_json(), eos_token=tok.eos_token_ids)
    executor = llguidance.LLExecutor(threads)
    options = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}

    def compile_(schema: dict[str, Any]) -> str:
        return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=options)  # type: ignore[arg-type]

    def fill(ms: list[Any], bitmask: torch.Tensor) -> None:
        llguidance.torch.fill_next_token_bitmask_par(
            executor, [(m, i) for i, m in enumerate(ms)], bitmask
        )

    def accept(ms: list[Any], tokens: list[int]) -> list[bool]:
        return [m.consume_token(t) for m, t in zip(ms, tokens, strict=True)]

    return Backend(
        "llguidance",
        compile_,
        lambda g: llguidance.LLMatcher(lltok, g),
        fill,
        accept,
        lambda m: m.reset(),
    )


def measure(backend: Backend, tok: Tokenizer, batch: int, steps: int) -> dict[str, Any]:
    # A schema's first matcher: llguidance compiles in the matcher.
    t0 = time.perf_counter()
    grammars = [backend.compile(case.schema) for case in SCHEMAS]
    [backend.matcher(g) for g in grammars]
    compile_ms = (time.perf_counter() - t0) * 1e3 / len(SCHEMAS)
    eos = tok.eos_token_ids[0]
    walks = [
        tok.encode(json.dumps(case.example, separators=SEPARATORS)) + [eos] for case in SCHEMAS
    ]
    matchers = [backend.matcher(grammars[i % len(SCHEMAS)]) for i in range(batch)]
    # Streams start at different offsets so the batch mixes positions, as a server's does.
    pos = [(i * 7) % len(walks[i % len(SCHEMAS)]) for i in range(batch)]
    for i, m in enumerate(matchers):
        assert all(backend.accept([m], [t])[0] for t in walks[i % len(SCHEMAS)][: pos[i]])
    bitmask = torch.full((batch, (tok.vocab_size + 31) // 32), -1, dtype=torch.int32)
    rows = list(range(batch))
    logits = torch.randn(batch, tok.vocab_size)
    fill_s, apply_s, accept_s = [], [], []
    for step in range(steps + 10):  # the first 10 warm caches up
        t0 = time.perf_counter()
        backend.fill(matchers, bitmask)
        t1 = time.perf_counter()
        apply_bitmasks(logits.clone(), rows, bitmask)
        t2 = time.perf_counter()
        tokens = [walks[i % len(SCHEMAS)][pos[i]] for i in range(batch)]
        bits = bitmask[torch.arange(batch), torch.tensor(tokens) // 32]
        allowed = (bits >> (torch.tensor(tokens, dtype=torch.int32) % 32)) & 1
        assert bool(allowed.all()), f"{backend.name}: a valid token was masked out"
        t3 = time.perf_counter()
        ok = backend.accept(matchers, tokens)
        t4 = time.perf_counter()
        assert all(ok), f"{backend.name}: a valid token was refused"
        for i in range(batch):
            pos[i] += 1
            if pos[i] == len(walks[i % len(SCHEMAS)]):
                backend.reset(matchers[i])
                pos[i] = 0
        if step >= 10:
            fill_s.append(t1 - t0)
            apply_s.append(t2 - t1)
            accept_s.append(t4 - t3)

    def us(xs: list[float]) -> dict[str, float]:
        xs = sorted(xs)
        return {"mean": statistics.mean(xs) * 1e6, "p99": xs[int(0.99 * (len(xs) - 1))] * 1e6}

    return {
        "backend": backend.name,
        "batch": batch,
        "compile_ms_per_schema": compile_ms,
        "fill_us": us(fill_s),
        "apply_us": us(apply_s),
        "accept_us": us(accept_s),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", default="1,16,64")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", default="results/grammar_masks.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tok = Tokenizer.from_model_path()
    backend = llguidance_backend(tok, args.threads)
    rows = []
    for batch in map(int, args.batches.split(",")):
        row = measure(backend, tok, batch, args.steps)
        rows.append(row)
        print(
            f"{backend.name:10s} B={batch:3d} fill {row['fill_us']['mean']:8.0f} us "
            f"(p99 {row['fill_us']['p99']:8.0f})  apply {row['apply_us']['mean']:6.0f} us  "
            f"accept {row['accept_us']['mean']:6.0f} us  "
            f"compile {row['compile_ms_per_schema']:.1f} ms/schema",
            flush=True,
        )
    cpu = {**cpu_info(), "threads": args.threads}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"cpu": cpu, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
