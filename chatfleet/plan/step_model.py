"""Step-time models: how long one engine step takes, from the shape of what it computes.

A step's cost depends on what the scheduler put in it, summarized as a `StepShape`:

    prefill chunk of n tokens after `start` cached ones:  n tokens through the weights,
                                                          n * (start + (n + 1) / 2) attention pairs
    decode of a sequence with c tokens of context:        1 token, c attention reads
    every sequence that samples:                          one LM-head row + the sampler

`LinearStepModel` is the measured model: a non-negative least-squares fit of step times
timed on real engine steps (`chatfleet plan calibrate`), stored as JSON. The roofline model for
GPUs is in roofline.py. Both answer `step_time_s(shape)`.
"""

from __future__ import annotations

import dataclasses
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chatfleet.engine.step_trace import read_trace, scheduled_seqs
from chatfleet.step import SchedulerOutput


@dataclass(frozen=True)
class StepShape:
    num_prefill_tokens: int = 0
    num_prefill_seqs: int = 0
    prefill_attention_pairs: float = 0.0  # query x key pairs of the prefill chunks
    prefill_context_tokens: int = 0  # keys the prefill chunks attend to (cached + new), summed
    num_decode_seqs: int = 0
    decode_context_tokens: int = 0  # keys read by the decodes, summed
    num_sampled: int = 0  # rows that get logits and a sampled token

    @property
    def num_batched_tokens(self) -> int:
        return self.num_prefill_tokens + self.num_decode_seqs

    @property
    def num_seqs(self) -> int:
        return self.num_prefill_seqs + self.num_decode_seqs

    @staticmethod
    def of(out: SchedulerOutput) -> StepShape:
        """The shape of a scheduled step (read before update_from_output advances it)."""
        return StepShape.from_seqs(scheduled_seqs(out))

    @staticmethod
    def from_seqs(seqs: Iterable[Sequence[int]]) -> StepShape:
        """The shape of a step given [tokens fed, tokens computed before, sampled] per
        sequence: a step trace's row (engine/step_trace.py)."""
        pre_tokens = pre_seqs = pre_ctx = dec_seqs = dec_ctx = sampled = 0
        pairs = 0.0
        for n, start, samples in seqs:
            sampled += samples
            # NOTE: like the runner, a one-token chunk is a decode (it attends like one).
            if n == 1:
                dec_seqs += 1
                dec_ctx += start + 1
            else:
                pre_seqs += 1
                pre_tokens += n
                pre_ctx += start + n
                pairs += n * (start + (n + 1) / 2)
        return StepShape(pre_tokens, pre_seqs, pairs, pre_ctx, dec_seqs, dec_ctx, sampled)


class StepTimeModel(ABC):
    """Seconds one engine step takes; pure."""

    kind: str

    @abstractmethod
    def step_time_s(self, shape: StepShape) -> float: ...

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Every parameter, for the plan's list of assumptions."""


@dataclass(frozen=True)
class ConstantStepModel(StepTimeModel):
    """Every step takes the same time (tests: M/D/1 queues)."""

    seconds: float
    kind = "constant"

    def step_time_s(self, shape: StepShape) -> float:
        return self.seconds

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "seconds": self.seconds}


FEATURES = (
    "constant",
    "num_batched_tokens",
    "num_sampled",
    "decode_context_tokens",
    "prefill_attention_pairs",
)


def features(shape: StepShape) -> list[float]:
    return [
        1.0,
        shape.num_batched_tokens,
        shape.num_sampled,
        shape.decode_context_tokens,
        shape.prefill_attention_pairs,
    ]


@dataclass(frozen=True)
class StepSample:
    """One timed step."""

    shape: StepShape
    seconds: float


def save_samples(samples: Sequence[StepSample], path: str | Path) -> None:
    """The timed steps a model was fitted on, one JSON object per line (so the model's terms
    can be changed and refitted later without timing again)."""
    lines = [json.dumps({**dataclasses.asdict(s.shape), "seconds": s.seconds}) for s in samples]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def load_samples(path: str | Path) -> list[StepSample]:
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            seconds = row.pop("seconds")
            out.append(StepSample(StepShape(**row), seconds))
    return out


def continues(step: dict[str, Any]) -> bool:
    """Whether the engine went straight from a trace row's step to the next: it still had
    requests after the step (the row's "more")."""
    return bool(step["more"])


def trace_samples(
    rows: Sequence[dict[str, Any]], since: float = float("-inf"), until: float = float("inf")
) -> list[StepSample]:
    """The rows of one replica's step trace (engine/step_trace.py) as timed samples, those
    starting within [since, until].

    A sample's time is the step's whole cycle: its duration plus, when the engine went
    straight on to the next step (`continues`), the engine loop's turn in between (handing
    the step's outputs to the server's event loop, taking new requests, and waiting for the
    GIL while the event loop streams those tokens). A simulated replica runs its steps back to
    back, so this is the time it has to be given: near saturation a few percent of step time
    is tens of percent of TPOT. After a step that leaves the engine idle the wait is for new
    work, not cost, and the step keeps its bare duration."""
    out = []
    for k, row in enumerate(rows):
        if not since <= row["t"] <= until:
            continue
        seconds = row["s"]
        if k + 1 < len(rows) and continues(row):
            seconds = rows[k + 1]["t"] - row["t"]
        out.append(StepSample(StepShape.from_seqs(row["seqs"]), seconds))
    return out


def samples_from_trace(
    path: str | Path, since: float = float("-inf"), until: float = float("inf")
) -> list[StepSample]:
    """The steps a server ran (`chatfleet serve --step-trace`), as timed samples (see
    `trace_samples`); `since` and `until` (time.monotonic() readings of the traced machine)
    cut one run out of a trace."""
    return trace_samples(read_trace(str(path)), since, until)


@dataclass(frozen=True)
class LinearStepModel(StepTimeModel):
    """step_time = sum(coefficient * feature), coefficients >= 0, fit on timed steps."""

    coefficients: tuple[float, ...]  # seconds per unit of each of FEATURES
    fit_error: dict[str, float]  # relative error of the fit on its samples (mean, p90)
    meta: dict[str, Any]  # where and how it was measured
    kind = "measured"

    def step_time_s(self, shape: StepShape) -> float:
        return float(sum(c * x for c, x in zip(self.coefficients, features(shape), strict=True)))

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "coefficients_s": dict(zip(FEATURES, self.coefficients, strict=True)),
            "fit_error": self.fit_error,
            **self.meta,
        }

    @staticmethod
    def fit(
        samples: Sequence[StepSample], meta: dict[str, Any], weight_by_time: bool = False
    ) -> LinearStepModel:
        """Non-negative least squares on the timed steps (see `fit_rows`)."""
        if len(samples) < len(FEATURES):
            raise ValueError(f"need at least {len(FEATURES)} timed steps, got {len(samples)}")
        x = np.array([features(s.shape) for s in samples], dtype=np.float64)
        y = np.array([s.seconds for s in samples], dtype=np.float64)
        coef, error = fit_rows(x, y, weight_by_time)
        return LinearStepModel(tuple(float(c) for c in coef), error, dict(meta))

    @staticmethod
    def fit_served(samples: Sequence[StepSample], meta: dict[str, Any]) -> LinearStepModel:
        """The fit for steps a server ran (`trace_samples`), each weighted by its time."""
        meta = {"method": "served steps (step trace)", **meta, "num_samples": len(samples)}
        return LinearStepModel.fit(samples, meta | {"weighted_by_time": True}, weight_by_time=True)

    def save(self, path: str | Path) -> None:
        data = {"kind": self.kind, **self.describe()}
        Path(path).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")

    @staticmethod
    def load(path: str | Path) -> LinearStepModel:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.get("kind") != "measured":
            raise ValueError(f"{path}: not a measured step model (chatfleet plan calibrate)")
        coef = data["coefficients_s"]
        meta = {k: v for k, v in data.items() if k not in ("kind", "coefficients_s", "fit_error")}
        return LinearStepModel(tuple(float(coef[f]) for f in FEATURES), data["fit_error"], meta)


def fit_rows(
    x: np.ndarray, y: np.ndarray, weight_by_time: bool = False
) -> tuple[np.ndarray, dict[str, float]]:
    """Coefficients >= 0 minimizing the relative error of x @ coef against y (rows divided
    by the measured time, so a 10 ms decode weighs as much as a 500 ms prefill), and that
    error on the rows (mean, p90).

    `weight_by_time`: each row's squared relative error counts in proportion to its time.
    For served steps (a trace), where thousands of one-row decodes outnumber the few big
    batches and long prefills that hold most of the busy time: the fit is then right where
    the fleet spends its time.
    """
    w = np.sqrt(y / y.mean()) if weight_by_time else np.ones_like(y)
    coef = _nnls(x / y[:, None] * w[:, None], w)
    rel = np.abs(x @ coef - y) / y
    return coef, {"mean": float(rel.mean()), "p90": float(np.percentile(rel, 90))}


def _nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Least squares with x >= 0: refit without the most negative coefficient until none is.

    NOTE: a simple active-set variant; enough for five well-scaled features (numpy has no
    NNLS and scipy is not a dependency).
    """
    scale = np.abs(a).max(axis=0)
    scale[scale == 0] = 1.0
    a = a / scale
    active = list(range(a.shape[1]))
    while True:
        x = np.zeros(a.shape[1])
        x[active] = np.linalg.lstsq(a[:, active], b, rcond=None)[0]
        negative = [i for i in active if x[i] < 0]
        if not negative:
            return x / scale
        active.remove(min(negative, key=lambda i: x[i]))
