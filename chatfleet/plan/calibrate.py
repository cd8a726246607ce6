"""Measure step times and fit the step-time model (`chatfleet plan calibrate`).

In process (`--model`): a real LLMEngine runs a grid of step shapes and every `step()` is
timed whole (schedule, forward, sampling, detokenization: what the server's engine loop
runs per step). For each (decode sequences D, context C): D requests with C-token prompts are
prefilled (those steps are samples too), then for each prefill size P one request of P tokens
joins the running decodes (a mixed step, chunked as the scheduler decides) and a few pure
decode steps follow. All steps are fitted by `LinearStepModel.fit`.

Over HTTP (`--base-url`, see http_calibrate.py) the server is measured from outside.
"""

from __future__ import annotations

import dataclasses
import platform
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chatfleet.config.engine_config import EngineConfig
from chatfleet.plan.step_model import LinearStepModel, StepSample, StepShape, save_samples
from chatfleet.sampling_params import SamplingParams


@dataclass(frozen=True)
class CalibrationGrid:
    decode_seqs: tuple[int, ...] = (1, 8, 32)
    context_lens: tuple[int, ...] = (32, 256, 1024)
    prefill_tokens: tuple[int, ...] = (0, 64, 256, 512)
    num_decode_steps: int = 4  # timed pure-decode steps after each prefill size
    num_warmup_steps: int = 8


class _Timer:
    """Times engine.step() and records the shape of the step it scheduled."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.samples: list[StepSample] = []
        self._shape: StepShape | None = None
        schedule = engine.scheduler.schedule

        def capture() -> Any:
            out = schedule()
            self._shape = StepShape.of(out)
            return out

        # NOTE: the step is timed whole, as the server's loop runs it; only its shape is
        # read on the way, by wrapping this engine's schedule().
        engine.scheduler.schedule = capture

    def step(self, record: bool = True) -> None:
        start = time.perf_counter()
        self.engine.step()
        seconds = time.perf_counter() - start
        if record and self._shape is not None and self._shape.num_seqs:
            self.samples.append(StepSample(self._shape, seconds))


def _prompt(rng: random.Random, num: int, vocab: int) -> list[int]:
    return [rng.randrange(1000, vocab - 1000) for _ in range(num)]


def run_grid(
    engine: Any, grid: CalibrationGrid, log: Callable[[str], None] = lambda s: None
) -> list[StepSample]:
    """Timed steps over the grid. Prompts are random tokens: no prefix-cache hits."""
    timer = _Timer(engine)
    rng = random.Random(0)
    vocab = engine.model_config.vocab_size
    ids = iter(range(1 << 30))
    long = SamplingParams(max_tokens=100000, ignore_eos=True)
    for _ in range(grid.num_warmup_steps):
        engine.add_request(
            f"w{next(ids)}", _prompt(rng, 64, vocab), dataclasses.replace(long, max_tokens=4)
        )
        timer.step(record=False)
    while engine.has_unfinished_requests():
        timer.step(record=False)
    for d in grid.decode_seqs:
        for c in grid.context_lens:
            decode_ids = [f"d{next(ids)}" for _ in range(d)]
            max_tokens = len(grid.prefill_tokens) * (grid.num_decode_steps + 4) + 8
            params = dataclasses.replace(long, max_tokens=max_tokens)
            for rid in decode_ids:
                engine.add_request(rid, _prompt(rng, c, vocab), params)
            while (
                any(r.num_computed_tokens < r.num_prompt_tokens for r in engine.scheduler.running)
                or engine.scheduler.num_waiting
            ):
                timer.step()
            for p in grid.prefill_tokens:
                if p:
                    engine.add_request(
                        f"p{next(ids)}",
                        _prompt(rng, p, vocab),
                        dataclasses.replace(long, max_tokens=1),
                    )
                    while engine.scheduler.num_waiting or len(engine.scheduler.running) > d:
                        timer.step()
                for _ in range(grid.num_decode_steps):
                    timer.step()
            for rid in decode_ids:
                engine.abort_request(rid)
            log(f"calibrate: D={d} C={c}: {len(timer.samples)} steps timed")
    return timer.samples


def calibrate_in_process(
    config: EngineConfig,
    grid: CalibrationGrid,
    log: Callable[[str], None] = lambda s: None,
    samples_path: str | None = None,
) -> LinearStepModel:
    """Time the grid and fit; the timed steps also go to samples_path when given."""
    from chatfleet.engine.llm_engine import LLMEngine

    engine = LLMEngine(config)
    samples = run_grid(engine, grid, log)
    if samples_path is not None:
        save_samples(samples, samples_path)
    meta = {
        "method": "in-process engine steps",
        "model": config.model or "default (SmolLM2-135M-Instruct GGUF)",
        "weight_format": engine.runner.info.weight_format,
        "num_threads": config.num_threads,
        "device": config.device,
        "max_num_batched_tokens": config.scheduler.max_num_batched_tokens,
        "machine": platform.processor() or platform.machine(),
        "num_samples": len(samples),
        "grid": dataclasses.asdict(grid),
    }
    return LinearStepModel.fit(samples, meta)
