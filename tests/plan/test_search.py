"""The load point's steady window: after a full turn mix, before the drain."""

from __future__ import annotations

from chatfleet.bench.record import RequestRecord
from chatfleet.plan.search import steady_window


def _turns(session: int, starts: list[float]) -> list[RequestRecord]:
    return [RequestRecord(session, k, t, 1.0, (0.1,), 8, 200) for k, t in enumerate(starts)]


def test_window_starts_after_the_median_conversation_span_and_ends_at_the_last_arrival():
    # Conversations arrive every 10 s over 100 s; each has turns 30 s apart (span 60 s).
    records = [r for i in range(11) for r in _turns(i, [10.0 * i + 30 * k for k in range(3)])]
    assert steady_window(records, 100.0, 0.1) == (60.0, 100.0, True)


def test_a_run_shorter_than_a_conversation_is_flagged_not_steady():
    records = [r for i in range(3) for r in _turns(i, [10.0 * i + 30 * k for k in range(3)])]
    lo, hi, is_steady = steady_window(records, 20.0, 0.1)
    assert not is_steady and lo == 2.0 and hi == float("inf")
