"""How much this machine's speed moves on its own: one engine, one thread, the same small grid
of decode steps timed again and again on an otherwise idle machine.

    .venv/bin/python benchmarks/machine_drift.py --seconds 420

Each round prints the summed time of its timed decode steps (the same shapes every round; the
prompts repeat, so after the first round their prefills are prefix-cache hits and only the
decodes are compared). Issue 9's validation needs the step time to hold within a few percent
between a calibration and a run minutes later; this shows what one short probe can see of it.
"""

from __future__ import annotations

import argparse
import sys
import time

from chatfleet.config.engine_config import CacheConfig, EngineConfig
from chatfleet.engine.llm_engine import LLMEngine
from chatfleet.plan.calibrate import CalibrationGrid, run_grid


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=420.0)
    p.add_argument("--pause", type=float, default=15.0, help="between rounds")
    args = p.parse_args()
    engine = LLMEngine(
        EngineConfig(num_threads=1, cache=CacheConfig(kv_cache_memory_bytes=256 << 20))
    )
    grid = CalibrationGrid((1, 8), (256,), (0, 256), num_decode_steps=6, num_warmup_steps=2)
    start = time.time()
    while time.time() - start < args.seconds:
        samples = run_grid(engine, grid)
        decode = [s.seconds for s in samples if s.shape.num_prefill_tokens == 0]
        print(
            f"{time.time() - start:6.0f} s  {len(decode)} decode steps  {1e3 * sum(decode):.1f} ms",
            flush=True,
        )
        time.sleep(args.pause)
    return 0


if __name__ == "__main__":
    sys.exit(main())
