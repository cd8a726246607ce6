"""EngineReplica: one Ray Serve replica owning one AsyncEngine.

`generate` is an async generator, called through `handle.options(stream=True)`: each
RequestOutput crosses to the ingress as it is produced. When the caller cancels the stream
(its HTTP client left), Serve cancels the generator and AsyncEngine aborts the request.
Serve calls `record_routing_stats` every `request_routing_stats_period_s`; what it returns is
what ChatfleetRequestRouter reads as the replica's queue, KV usage and prefix-cache counters.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import ray

from chatfleet.config.engine_config import EngineConfig
from chatfleet.engine.async_engine import AsyncEngine
from chatfleet.outputs import RequestOutput
from chatfleet.ray_serve.calls import GenerateCall


@dataclass(frozen=True)
class ReplicaFacts:
    """What the ingress must know before serving (found when the engine was built)."""

    max_model_len: int


class EngineReplica:
    """Deployed by app.py with `serve.deployment(...)` options from RayDeployConfig."""

    def __init__(self, engine_config: EngineConfig) -> None:
        self.engine = AsyncEngine(engine_config)

    async def generate(self, call: GenerateCall) -> AsyncIterator[RequestOutput]:
        """RequestOutputs of one choice; raises the engine's typed errors (bad input: before
        the first output)."""
        stream = self.engine.generate(call.prompt, call.params, call.request_id, call.priority)
        async for out in stream:
            yield out

    def facts(self) -> ReplicaFacts:
        return ReplicaFacts(self.engine.max_model_len)

    async def record_routing_stats(self) -> dict[str, Any]:
        """EngineStats as a dict (Serve ships it to every request router), plus where this
        replica runs (for `RayReplicaManager.stats` and placement checks)."""
        stats = dataclasses.asdict(await self.engine.get_stats())
        return {**stats, "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}

    def check_health(self) -> None:
        """Serve's periodic probe: raising EngineDeadError makes Serve replace this replica."""
        self.engine.check_health()

    def __del__(self) -> None:
        # NOTE: Serve calls __del__ after draining a replica it removes; the engine thread
        # is a daemon, but stopping it lets the step in progress finish cleanly.
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()
