"""One benchmark request's raw measurements: what the result JSON stores per request.

Everything the summary reports is derived from these records (see `summary.summarize`), so a
saved result can always be re-checked or re-aggregated without rerunning the benchmark.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

TokenCountSource = Literal["usage", "tokenizer"]
# Microseconds are far below anything measured here; rounding keeps the JSON small and makes
# the stored values exactly the ones the summary was computed from.
TIME_DECIMALS = 6


def round_s(seconds: float) -> float:
    return round(seconds, TIME_DECIMALS)


@dataclass(frozen=True)
class RequestRecord:
    """Timings are seconds: `start_s` since the run started, the others since `start_s`."""

    session_index: int  # which conversation (single-turn datasets: one per request)
    turn_index: int  # 0 for single-turn datasets
    start_s: float
    e2e_s: float  # until the stream ended, or until the failure
    chunk_times_s: tuple[float, ...]  # arrival of every chunk that carried content
    max_tokens: int  # what was asked for
    status_code: int | None = None  # None: no HTTP response at all (connection error)
    error_type: str | None = None  # None: success
    error_message: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    token_count_source: TokenCountSource | None = None

    @property
    def is_success(self) -> bool:
        return self.error_type is None

    @property
    def end_s(self) -> float:
        return self.start_s + self.e2e_s

    @property
    def ttft_s(self) -> float | None:
        return self.chunk_times_s[0] if self.chunk_times_s else None

    @property
    def itls_s(self) -> list[float]:
        """Gaps between consecutive content chunks."""
        times = self.chunk_times_s
        return [b - a for a, b in zip(times, times[1:], strict=False)]

    @property
    def tpot_s(self) -> float | None:
        """(e2e - ttft) / (completion_tokens - 1); None with fewer than two output tokens."""
        ttft = self.ttft_s
        if ttft is None or self.completion_tokens is None or self.completion_tokens < 2:
            return None
        return (self.e2e_s - ttft) / (self.completion_tokens - 1)

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["chunk_times_s"] = list(self.chunk_times_s)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RequestRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["chunk_times_s"] = tuple(values.get("chunk_times_s") or ())
        return cls(**values)
