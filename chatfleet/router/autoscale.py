"""Autoscaling: add a replica when the fleet queues, remove one when it idles, with hysteresis.

`decide` is pure (load, state, config, now) -> (+1 | 0 | -1, next state). Hysteresis comes
three ways: different thresholds for up and down, a signal that must hold for `up_after_s`
/ `down_after_s`, and a cool-down after every change. `Autoscaler` applies decisions through
a ReplicaManager; a replica is removed only after the router stopped sending it requests and
its in-flight requests finished (or `drain_timeout_s` passed).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from chatfleet.config.router_config import AutoscaleConfig
from chatfleet.router.forwarder import Router
from chatfleet.router.pool import ReplicaState
from chatfleet.router.replica_manager import ReplicaManager

logger = logging.getLogger("chatfleet.up")


@dataclass(frozen=True)
class FleetLoad:
    num_replicas: int  # managed replicas, eligible or not (a starting one counts)
    num_eligible: int
    num_waiting: int  # totals over eligible replicas
    num_in_flight: int
    kv_cache_usage: float  # sum of fractions

    @staticmethod
    def from_states(states: Sequence[ReplicaState], num_replicas: int) -> FleetLoad:
        eligible = [s for s in states if s.is_eligible]
        return FleetLoad(
            num_replicas,
            len(eligible),
            sum(s.load.num_waiting for s in eligible),
            sum(s.num_in_flight for s in eligible),
            sum(s.load.kv_cache_usage for s in eligible),
        )


@dataclass(frozen=True)
class ScalerState:
    high_since_s: float | None = None  # since when the fleet has been over the up thresholds
    low_since_s: float | None = None
    last_change_s: float = -math.inf


def _is_high(load: FleetLoad, c: AutoscaleConfig) -> bool:
    n = load.num_eligible
    return n > 0 and (
        load.num_waiting / n > c.up_queue_len or load.kv_cache_usage / n > c.up_kv_usage
    )


def _is_low(load: FleetLoad, c: AutoscaleConfig) -> bool:
    n = load.num_eligible
    if n < 2 or n < load.num_replicas:  # never while a replica is starting or unhealthy
        return False
    return (
        load.num_waiting == 0
        and load.kv_cache_usage / (n - 1) < c.down_kv_usage
        and load.num_in_flight / (n - 1) < c.down_in_flight
    )


def decide(
    load: FleetLoad, state: ScalerState, config: AutoscaleConfig, now_s: float
) -> tuple[int, ScalerState]:
    """+1 (add a replica), -1 (remove one) or 0, and the state for the next call."""
    changed = ScalerState(last_change_s=now_s)
    if load.num_replicas < config.min_replicas:
        return 1, changed
    if load.num_replicas > config.max_replicas:
        return -1, changed
    high, low = _is_high(load, config), _is_low(load, config)
    state = ScalerState(
        (now_s if state.high_since_s is None else state.high_since_s) if high else None,
        (now_s if state.low_since_s is None else state.low_since_s) if low else None,
        state.last_change_s,
    )
    if now_s - state.last_change_s < config.cooldown_s:
        return 0, state

    def held(since_s: float | None, after_s: float) -> bool:
        return since_s is not None and now_s - since_s >= after_s

    if held(state.high_since_s, config.up_after_s) and load.num_replicas < config.max_replicas:
        return 1, changed
    if held(state.low_since_s, config.down_after_s) and load.num_replicas > config.min_replicas:
        return -1, changed
    return 0, state


class Autoscaler:
    """Every `interval_s`: read the router's pool, decide, start or drain-and-stop a replica."""

    def __init__(self, router: Router, manager: ReplicaManager, config: AutoscaleConfig) -> None:
        self.router, self.manager, self.config = router, manager, config
        self.state = ScalerState()

    def load(self) -> FleetLoad:
        managed = {info.url for info in self.manager.list()}
        states = [s for s in self.router.pool.states() if s.replica_id in managed]
        return FleetLoad.from_states(states, len(managed))

    async def step(self, now_s: float) -> int:
        action, self.state = decide(self.load(), self.state, self.config, now_s)
        if action > 0:
            info = await self.manager.start()
            self.router.pool.add(info.url)
            logger.info("scaled up: added %s", info.url)
        elif action < 0:
            await self.remove_one()
        return action

    async def remove_one(self) -> None:
        """Drain the least busy replica (the newest on ties), then stop and forget it."""
        infos = self.manager.list()
        if not infos:
            return
        in_flight = {s.replica_id: s.num_in_flight for s in self.router.pool.states()}
        victim = min(reversed(infos), key=lambda info: in_flight.get(info.url, 0))
        url = victim.url
        self.router.pool.retire(url)
        deadline = time.monotonic() + self.config.drain_timeout_s
        while time.monotonic() < deadline:
            state = self.router.pool.state(url)
            if state is None or state.num_in_flight == 0:
                break
            await asyncio.sleep(0.1)
        await self.manager.stop(victim.replica_id, timeout_s=self.config.drain_timeout_s)
        self.router.pool.remove(url)
        self.router.forget(url)
        logger.info("scaled down: removed %s", url)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.config.interval_s)
            try:
                await self.step(time.monotonic())
            except Exception:  # keep scaling; a failed start is retried next round
                logger.exception("autoscaler step failed")
