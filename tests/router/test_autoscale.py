"""Autoscaling decisions: thresholds, how long a signal must hold, cool-down, bounds."""

from __future__ import annotations

import pytest

from chatfleet.config.router_config import AutoscaleConfig
from chatfleet.router.autoscale import FleetLoad, ScalerState, decide

CONFIG = AutoscaleConfig(
    min_replicas=1, max_replicas=3, up_after_s=10, down_after_s=30, cooldown_s=20
)


def load(n: int, waiting: int = 0, in_flight: int = 0, kv: float = 0.0, eligible=None):
    return FleetLoad(n, n if eligible is None else eligible, waiting, in_flight, kv * n)


def run(loads_by_time: list[tuple[float, FleetLoad]], state=None) -> list[int]:
    state = state or ScalerState()
    actions = []
    for now, fleet in loads_by_time:
        action, state = decide(fleet, state, CONFIG, now)
        actions.append(action)
    return actions


def test_config_requires_bounds_and_a_gap_between_thresholds():
    with pytest.raises(ValueError):
        AutoscaleConfig(min_replicas=3, max_replicas=2)
    with pytest.raises(ValueError):
        AutoscaleConfig(min_replicas=1, max_replicas=2, up_kv_usage=0.5, down_kv_usage=0.5)


def test_below_the_floor_adds_at_once():
    assert run([(0, load(0))]) == [1]


def test_a_queue_must_persist_before_scaling_up():
    busy = load(2, waiting=10, in_flight=20)
    assert run([(0, busy), (5, busy), (9.9, busy), (10, busy)]) == [0, 0, 0, 1]
    # A dip resets the timer.
    assert run([(0, busy), (5, load(2, in_flight=4)), (12, busy), (21, busy), (22, busy)]) == [
        0,
        0,
        0,
        0,
        1,
    ]


def test_kv_pressure_also_scales_up_but_never_past_the_ceiling():
    full = load(2, in_flight=4, kv=0.95)
    assert run([(0, full), (10, full)]) == [0, 1]
    assert run([(0, load(3, kv=0.95)), (100, load(3, kv=0.95))]) == [0, 0]


def test_an_idle_fleet_shrinks_slowly_and_not_below_the_floor():
    idle = load(3, in_flight=1)
    assert run([(0, idle), (29, idle), (30, idle)]) == [0, 0, -1]
    assert run([(0, load(1)), (100, load(1))]) == [0, 0]


def test_between_the_thresholds_nothing_happens():
    # Not queueing (no scale-up), but 3 in flight would be 3 per replica with one fewer.
    middle = load(2, in_flight=3, kv=0.5)
    assert run([(t, middle) for t in range(0, 200, 10)]) == [0] * 20


def test_cooldown_after_a_change_and_no_removal_while_a_replica_starts():
    busy = load(2, waiting=10)
    state = ScalerState(last_change_s=0.0)
    assert run([(1, busy), (15, busy), (20, busy)], state) == [0, 0, 1]
    starting = load(3, eligible=2)  # the new replica is still loading its model
    assert run([(0, starting), (100, starting)]) == [0, 0]
