"""How much other work on the machine stretches an engine step: a 450-token prefill and a
4-row decode step of the default model on one thread, timed in process

    alone         nothing else running
    gil_bursts    a thread in the engine's process runs Python for 0.5 ms every 2.5 ms (what
                  a server's event loop does while tokens stream)
    other_core    a separate process spins pure Python on another core (a router or a load
                  generator on the same machine)

The layer-by-layer prefill takes the GIL back between its ops; the fused decode step is one
C++ call. Plan validation on a 2-core machine found served prefill steps 11-28% slower than
the in-process step model (docs/benchmarks.md, issue 9); this measures the candidates.

    .venv/bin/python benchmarks/step_interference.py --output docs/results/step_interference.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from chatfleet.config.engine_config import CacheConfig, EngineConfig
from chatfleet.engine.llm_engine import LLMEngine
from chatfleet.sampling_params import SamplingParams

MODES = ("alone", "gil_bursts", "other_core")


class StepTimer:
    def __init__(self) -> None:
        config = EngineConfig(num_threads=1, cache=CacheConfig(kv_cache_memory_bytes=256 << 20))
        self.engine = LLMEngine(config)
        self.rng = random.Random(0)
        self.ids = iter(range(1 << 30))

    def _prompt(self, n: int) -> list[int]:
        return [self.rng.randrange(1000, 40000) for _ in range(n)]

    def _drain(self) -> None:
        while self.engine.has_unfinished_requests():
            self.engine.step()

    def prefill_s(self, num_tokens: int) -> float:
        params = SamplingParams(max_tokens=1, ignore_eos=True)
        self.engine.add_request(f"p{next(self.ids)}", self._prompt(num_tokens), params)
        start = time.perf_counter()
        self.engine.step()
        seconds = time.perf_counter() - start
        self._drain()
        return seconds

    def decode_s(self, rows: int, steps: int) -> float:
        """Median step of `rows` sequences decoding after 200-token prompts."""
        params = SamplingParams(max_tokens=steps + 2, ignore_eos=True)
        for _ in range(rows):
            self.engine.add_request(f"d{next(self.ids)}", self._prompt(200), params)
        self.engine.step()  # the prompts, in one chunk
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            self.engine.step()
            times.append(time.perf_counter() - start)
        self._drain()
        return statistics.median(times)


def _gil_bursts(stop: threading.Event) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        while time.perf_counter() - start < 0.0005:
            pass
        time.sleep(0.002)


def measure(timer: StepTimer, mode: str, repeats: int) -> dict[str, float]:
    stop = threading.Event()
    spinner = None
    if mode == "gil_bursts":
        threading.Thread(target=_gil_bursts, args=(stop,), daemon=True).start()
    elif mode == "other_core":
        spinner = subprocess.Popen([sys.executable, "-c", "x = 0\nwhile True: x += 1"])
        time.sleep(0.5)
    try:
        prefill = statistics.median(timer.prefill_s(450) for _ in range(repeats))
        decode = statistics.median(timer.decode_s(4, 30) for _ in range(repeats))
    finally:
        stop.set()
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    return {"prefill_450_ms": prefill * 1e3, "decode_4_rows_ms": decode * 1e3}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--output", default="docs/results/step_interference.json")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2, help="the modes alternate, this many times")
    args = p.parse_args()
    timer = StepTimer()
    for _ in range(3):
        timer.prefill_s(64)  # warm-up
    results: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    for _ in range(args.rounds):
        for mode in MODES:
            results[mode].append(measure(timer, mode, args.repeats))
            print(mode, results[mode][-1], flush=True)
    summary = {
        mode: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        for mode, runs in results.items()
    }
    base = summary["alone"]
    for mode, row in summary.items():
        ratios = ", ".join(f"{k} x{row[k] / base[k]:.2f}" for k in row)
        print(f"{mode:<11} {ratios}")
    data = {"config": vars(args), "rounds": results, "median": summary}
    Path(args.output).write_text(json.dumps(data, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
