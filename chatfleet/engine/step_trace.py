"""A trace of the engine's steps: when each began, how long it took and what it computed, one
JSON line per step (`chatfleet serve --step-trace PATH`).

`chatfleet plan` predicts a fleet from a step-time model fitted on timed steps. A trace of a
served workload holds the steps a real server ran under real traffic, so the model can be
checked on them, or fitted on them (`chatfleet plan calibrate --trace`). A row:

    {"t": 12.345678, "s": 0.031, "seqs": [[n, start, samples], ...], "more": 1}

t: the step's start (time.monotonic, seconds); s: its duration (schedule, forward, sampling,
detokenization: the whole `LLMEngine.step`); seqs: one [tokens fed, tokens computed before,
1 if it sampled] per scheduled sequence; more: 1 if the engine still had requests after the
step (its loop goes straight on to the next one), 0 if it went idle.
"""

from __future__ import annotations

import gzip
import json
import os
import time
from typing import TextIO

from chatfleet.step import SchedulerOutput

_FLUSH_EVERY_S = 1.0


def scheduled_seqs(out: SchedulerOutput) -> list[tuple[int, int, int]]:
    """[tokens fed, tokens computed before, sampled] per sequence; read before the step's
    update advances the requests."""
    return [(s.num_new_tokens, s.start, int(s.samples)) for s in out.scheduled]


class StepTrace:
    """Appends one row per step; `{pid}` in the path becomes the process id (several
    replicas started with the same arguments each write their own file)."""

    def __init__(self, path: str) -> None:
        self.path = path.replace("{pid}", str(os.getpid()))
        self._file: TextIO = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        self._flushed = time.monotonic()

    def record(
        self, start: float, seconds: float, seqs: list[tuple[int, int, int]], more: bool
    ) -> None:
        row = {"t": round(start, 6), "s": round(seconds, 6), "seqs": seqs, "more": int(more)}
        self._file.write(json.dumps(row, separators=(",", ":")) + "\n")
        if time.monotonic() - self._flushed > _FLUSH_EVERY_S:  # readable while the server runs
            self.flush()

    def flush(self) -> None:
        self._file.flush()
        self._flushed = time.monotonic()

    def close(self) -> None:
        self._file.close()


def read_trace(path: str) -> list[dict]:
    """The rows of a trace (gzipped when the name ends in .gz); a last line cut off by a
    killed process is skipped."""
    rows = []
    with (gzip.open if path.endswith(".gz") else open)(path, "rt", encoding="utf-8") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows
