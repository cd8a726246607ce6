"""EngineClient: what the HTTP server needs from an engine, local or remote."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from chatfleet.modelfile.tokenizer import Tokenizer
from chatfleet.outputs import RequestOutput
from chatfleet.sampling_params import SamplingParams


@dataclass(frozen=True)
class EngineStats:
    """A consistent snapshot, read on the engine thread (for /metrics and routers)."""

    num_running: int
    num_waiting: int
    kv_cache_usage: float
    num_preemptions: int
    prefix_cache_queries: int
    prefix_cache_hits: int


class EngineClient(Protocol):
    tokenizer: Tokenizer

    @property
    def max_model_len(self) -> int: ...

    @property
    def max_num_seqs(self) -> int:
        """Requests that run at once; admission lets `max_queue_len` more wait."""
        ...

    @property
    def is_dead(self) -> bool: ...

    def generate(
        self,
        prompt: str | list[int],
        params: SamplingParams,
        request_id: str | None = None,
        priority: int = 0,
    ) -> AsyncIterator[RequestOutput]: ...

    async def abort(self, request_id: str) -> None: ...

    def check_health(self, max_stall_s: float = 30.0) -> None: ...

    async def get_stats(self) -> EngineStats: ...

    def shutdown(self, timeout_s: float = 5.0) -> None: ...
