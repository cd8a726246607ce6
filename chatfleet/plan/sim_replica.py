"""One simulated engine replica: the real Scheduler and KVCacheManager, a step-time model
in place of the model runner, and made-up sampled tokens.

    start_step(): scheduler.schedule() -> StepShape -> step_time_s + serving overhead
                  (the step "runs")
    finish_step(): sampled ids for rows that sample -> scheduler.update_from_output()

Admission, chunked prefill, prefix caching, preemption and stops are the engine's own code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from chatfleet.config.engine_config import SchedulerConfig
from chatfleet.engine.kv_cache_manager import KVCacheManager
from chatfleet.engine.request import Request
from chatfleet.engine.scheduler import EngineCoreOutput, Scheduler
from chatfleet.plan.overhead import ServingOverhead
from chatfleet.plan.step_mix import StepMix
from chatfleet.plan.step_model import StepShape, StepTimeModel
from chatfleet.router.pool import ReplicaLoad
from chatfleet.step import ModelRunnerOutput, SchedulerOutput, StepRequest


@dataclass(frozen=True)
class ReplicaSpec:
    """What one replica is: its scheduler limits, KV pool and admission bound."""

    scheduler: SchedulerConfig
    num_blocks: int
    block_size: int = 16
    enable_prefix_caching: bool = True
    max_queue_len: int = 256  # the server refuses (503) past max_num_seqs + this in flight


@dataclass
class ReplicaStats:
    max_kv_usage: float = 0.0
    steps: StepMix = field(default_factory=StepMix)

    @property
    def num_steps(self) -> int:
        return self.steps.num_steps

    @property
    def busy_s(self) -> float:
        return self.steps.seconds


class SimReplica:
    def __init__(
        self,
        replica_id: str,
        spec: ReplicaSpec,
        step_model: StepTimeModel,
        overhead: ServingOverhead | None = None,
    ) -> None:
        self.replica_id = replica_id
        self.spec = spec
        self.overhead = overhead or ServingOverhead()
        self.kv = KVCacheManager(spec.num_blocks, spec.block_size, spec.enable_prefix_caching)
        self.scheduler = Scheduler(spec.scheduler, self.kv)
        self.step_model = step_model
        self.stats = ReplicaStats()
        self.num_in_flight = 0  # admitted by the "server", not yet finished
        self._step: SchedulerOutput | None = None

    @property
    def is_busy(self) -> bool:
        return self._step is not None

    def can_admit(self) -> bool:
        """The server's admission control (503 beyond it)."""
        return self.num_in_flight < self.spec.scheduler.max_num_seqs + self.spec.max_queue_len

    def add(self, request: Request) -> None:
        self.num_in_flight += 1
        self.scheduler.add_request(request)

    def start_step(self) -> float | None:
        """Schedule a step; its duration in seconds, or None when there is nothing to run."""
        assert self._step is None, "a step is already running"
        if not self.scheduler.has_unfinished():
            return None
        out = self.scheduler.schedule()
        if out.is_empty:
            return None
        self._step = out
        shape = StepShape.of(out)
        # NOTE: measured overhead terms may be negative (an in-process model corrected to
        # in-server steps); a step never takes less than no time.
        seconds = max(0.0, self.step_model.step_time_s(shape) + self.overhead.step_extra_s(shape))
        self.stats.steps.add(shape, seconds)
        self.stats.max_kv_usage = max(self.stats.max_kv_usage, self.kv.usage)
        return seconds

    def finish_step(self, next_token: Callable[[StepRequest], int]) -> list[EngineCoreOutput]:
        """End the running step: every row that samples gets `next_token(request)`."""
        out, self._step = self._step, None
        assert out is not None, "no step is running"
        sampled = {s.request.request_id: next_token(s.request) for s in out.scheduled if s.samples}
        outputs = self.scheduler.update_from_output(out, ModelRunnerOutput(sampled))
        self.num_in_flight -= sum(o.finished for o in outputs)
        return outputs

    def load(self) -> ReplicaLoad:
        """What the router would scrape from this replica's /metrics now."""
        s = self.scheduler
        stats = self.kv.stats
        return ReplicaLoad(s.num_waiting, s.num_running, self.kv.usage, stats.queries, stats.hits)
