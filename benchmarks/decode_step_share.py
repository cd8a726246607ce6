"""Where a 64-stream decode step goes: attention, the output head, and the rest (the decoder
matmuls, norms, Python), at two context lengths, batch-invariant (fused int8 step) and with
the measured matmul plan (`--no-batch-invariant`), one process per configuration, alternating.

    .venv/bin/python benchmarks/decode_step_share.py --output docs/results/decode_step_share.json

Each configuration fills 64 requests with synthetic prompts of the context length, lets them all
reach decode, then times `--steps` decode steps; attention and the head are timed by wrapping the
runner's calls (the fused int8 step runs attention inside one C++ call, so there only the total
and the head are known).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def decoding_engine(context: int, streams: int, steps: int, batch_invariant: bool, kv="auto"):
    """An engine whose `streams` requests of synthetic `context`-token prompts have all
    finished prefill and decode, with room for `steps` more steps and three warm-up ones."""
    from chatfleet import LLM, SamplingParams
    from chatfleet.config.engine_config import CacheConfig, SchedulerConfig

    # Requests that finish their prefill decode while the others prefill: enough output tokens
    # that none finishes before all are decoding (at least one prefill token per step).
    max_tokens = steps + 16 + streams * context // 256
    blocks = streams * ((context + max_tokens) // 16 + 2)
    llm = LLM(
        batch_invariant=batch_invariant,
        scheduler=SchedulerConfig(max_num_seqs=streams),
        cache=CacheConfig(num_blocks_override=blocks, kv_cache_dtype=kv),
    )
    engine = llm.engine
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    for i in range(streams):
        prompt = [(37 * i * j + 11) % 49000 + 100 for j in range(context)]
        engine.add_request(str(i), prompt, params)
    while not (
        len(engine.scheduler.running) == streams
        and all(r.num_computed_tokens >= r.num_prompt_tokens for r in engine.scheduler.running)
    ):
        engine.step()
    return engine


def measure(context: int, batch_invariant: bool, steps: int, streams: int) -> dict:
    engine = decoding_engine(context, streams, steps, batch_invariant)
    runner = engine.runner
    spent: defaultdict[str, float] = defaultdict(float)

    def timed(obj: object, name: str) -> None:
        call = getattr(obj, name)

        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            out = call(*args, **kwargs)
            spent[name] += time.perf_counter() - start
            return out

        setattr(obj, name, wrapper)

    timed(runner.attn, "forward")
    timed(runner.attn, "rope_write_kv")
    timed(runner.model, "compute_logits")
    for _ in range(3):
        engine.step()
    spent.clear()
    start = time.perf_counter()
    for _ in range(steps):
        engine.step()
    step_ms = (time.perf_counter() - start) / steps * 1e3
    attention_ms = (spent["forward"] + spent["rope_write_kv"]) / steps * 1e3
    head_ms = spent["compute_logits"] / steps * 1e3
    fused = runner.model.fused_decode is not None and attention_ms == 0.0
    return {
        "context": context,
        "batch_invariant": batch_invariant,
        "streams": streams,
        "step_ms": round(step_ms, 2),
        "attention_ms": None if fused else round(attention_ms, 2),
        "head_ms": round(head_ms, 2),
        "attention_share": None if fused else round(attention_ms / step_ms, 3),
        "fused_decode_step": fused,
    }


def machine() -> dict:
    flags = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = line
                break
    wanted = ("amx_bf16", "amx_int8", "amx_tile", "avx512_bf16", "avx512_vnni")
    return {"cpu_flags": [f for f in wanted if f in flags.split()], "threads": os.cpu_count()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--contexts", default="300,1000")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--streams", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--output", default="results/decode_step_share.json")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # "context,invariant"
    args = p.parse_args()
    if args.one:  # a child: one configuration, its result as JSON on stdout
        context, invariant = args.one.split(",")
        print(json.dumps(measure(int(context), invariant == "1", args.steps, args.streams)))
        return
    runs = []
    for repeat in range(args.repeats):
        for context in (int(c) for c in args.contexts.split(",")):
            for invariant in (True, False):
                child = [sys.executable, __file__, "--one", f"{context},{int(invariant)}"]
                child += ["--steps", str(args.steps), "--streams", str(args.streams)]
                out = subprocess.run(child, cwd=ROOT, capture_output=True, text=True, check=True)
                result = json.loads(out.stdout.strip().splitlines()[-1]) | {"repeat": repeat}
                print(json.dumps(result), flush=True)
                runs.append(result)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"machine": machine(), "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
