"""What a replica's steps were made of, summed: how many, how long, how much prefill and
decode. The same sums for a simulated replica and for a real one's step trace show where a
prediction parts from the real fleet: in the step times (same steps, other durations) or in
the batches the scheduler formed (other steps).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from chatfleet.plan.step_model import StepSample, StepShape, StepTimeModel


@dataclass
class StepMix:
    num_steps: int = 0
    seconds: float = 0.0  # the steps' durations (measured, or the simulator's), summed
    num_prefill_steps: int = 0  # steps with at least one prefill chunk
    prefill_tokens: int = 0
    decode_rows: int = 0
    decode_context_tokens: int = 0

    def add(self, shape: StepShape, seconds: float) -> None:
        self.num_steps += 1
        self.seconds += seconds
        self.num_prefill_steps += shape.num_prefill_seqs > 0
        self.prefill_tokens += shape.num_prefill_tokens
        self.decode_rows += shape.num_decode_seqs
        self.decode_context_tokens += shape.decode_context_tokens

    @staticmethod
    def total(mixes: Iterable[StepMix]) -> StepMix:
        out = StepMix()
        for m in mixes:
            for f in dataclasses.fields(StepMix):
                setattr(out, f.name, getattr(out, f.name) + getattr(m, f.name))
        return out

    @staticmethod
    def of(samples: Iterable[StepSample]) -> StepMix:
        mix = StepMix()
        for s in samples:
            mix.add(s.shape, s.seconds)
        return mix

    def summary(self) -> dict[str, Any]:
        n = max(1, self.num_steps)
        return {
            "num_steps": self.num_steps,
            "mean_step_ms": 1e3 * self.seconds / n,
            "prefill_step_share": self.num_prefill_steps / n,
            "prefill_tokens_per_prefill_step": self.prefill_tokens / max(1, self.num_prefill_steps),
            "decode_rows_per_step": self.decode_rows / n,
            "decode_context_per_row": self.decode_context_tokens / max(1, self.decode_rows),
        }


def step_class(shape: StepShape) -> str:
    """A coarse kind of step: prefill chunks by size, else decode batches by rows."""
    if shape.num_prefill_seqs:
        n = shape.num_prefill_tokens
        return "prefill <64" if n < 64 else "prefill 64-255" if n < 256 else "prefill 256+"
    d = shape.num_decode_seqs
    return (
        "decode 1"
        if d == 1
        else "decode 2-4"
        if d <= 4
        else "decode 5-16"
        if d <= 16
        else "decode 17+"
    )


def model_error_by_class(
    model: StepTimeModel, samples: Iterable[StepSample]
) -> dict[str, dict[str, float]]:
    """Per kind of step (`step_class`): count, mean measured and modelled time, and the
    modelled / measured - 1 of their sums. Shows which steps a model gets wrong."""
    sums: dict[str, list[float]] = {}
    for s in samples:
        row = sums.setdefault(step_class(s.shape), [0, 0.0, 0.0])
        row[0] += 1
        row[1] += s.seconds
        row[2] += model.step_time_s(s.shape)
    return {
        name: {
            "num_steps": n,
            "measured_ms": 1e3 * real / n,
            "model_ms": 1e3 * modelled / n,
            "error": modelled / real - 1 if real > 0 else 0.0,
        }
        for name, (n, real, modelled) in sorted(sums.items())
    }


def model_error(model: StepTimeModel, samples: Iterable[StepSample]) -> dict[str, float]:
    """A step model against timed steps: summed predicted / summed measured time - 1 (what a
    throughput prediction inherits), and the mean and p90 relative error of single steps."""
    pairs = [(model.step_time_s(s.shape), s.seconds) for s in samples if s.seconds > 0]
    if not pairs:
        return {"num_steps": 0}
    rel = sorted(abs(p - m) / m for p, m in pairs)
    return {
        "num_steps": len(pairs),
        "total": sum(p for p, _ in pairs) / sum(m for _, m in pairs) - 1,
        "mean_abs": sum(rel) / len(rel),
        "p90_abs": rel[min(len(rel) - 1, int(0.9 * len(rel)))],
    }
