"""AsyncEngine: one background thread owns the LLMEngine (scheduler, KV cache, runner);
asyncio callers talk to it through an inbox and read per-request output queues.

    caller (event loop)            engine thread
    generate() --add cmd-->  inbox --> engine.add_request()   (errors go back via a future)
               <--outputs--  call_soon_threadsafe(queue.put_nowait)  <-- engine.step()
    cancel     --abort cmd-> inbox --> engine.abort_request()  (blocks freed at once)

NOTE: a thread, not a process: torch ops release the GIL, so the event loop stays responsive
while a step runs, and there is no serialization of outputs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from chatfleet.config.engine_config import EngineConfig
from chatfleet.engine.engine_client import EngineStats
from chatfleet.engine.llm_engine import LLMEngine
from chatfleet.errors import EngineDeadError
from chatfleet.outputs import RequestOutput
from chatfleet.sampling_params import SamplingParams

_IDLE_WAIT_S = 0.05
# Fault injection for tests of the failure path: the N-th step raises, as a crashed kernel would.
FAULT_STEP_ENV = "CHATFLEET_FAULT_INJECT_STEP"


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[RequestOutput | BaseException]


class AsyncEngine:
    """Streams RequestOutputs per request; the EngineClient the server is written against."""

    def __init__(self, config: EngineConfig | None = None, attention: str = "auto") -> None:
        self._inbox: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._wakeup = threading.Event()
        self._streams: dict[str, _Stream] = {}
        self._ids = itertools.count()
        self._stopping = False
        self.dead_error: BaseException | None = None
        self.last_progress = time.monotonic()  # updated every loop turn, for liveness checks
        fault = os.environ.get(FAULT_STEP_ENV)
        self._fault_step = int(fault) if fault else None
        self._num_steps = 0
        # NOTE: the engine is built on its own thread so that every torch op (loading,
        # quantizing, stepping) runs under one OpenMP team. A second team (e.g. the main
        # thread's, from loading) makes libgomp count more threads than cores and cut its
        # spin-wait to almost nothing: workers then sleep between the parallel regions of a
        # decode step and each wake-up costs a VM IPI, several times the step's own time.
        built: concurrent.futures.Future[LLMEngine] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run, args=(config, attention, built), name="chatfleet-engine", daemon=True
        )
        self._thread.start()
        self.engine: LLMEngine = built.result()  # re-raises a load failure in the caller
        self.tokenizer = self.engine.tokenizer

    # ---- caller side (event loop) -----------------------------------------------------
    @property
    def is_dead(self) -> bool:
        return self.dead_error is not None

    def _submit(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        if self.dead_error is not None:
            raise EngineDeadError(f"the engine loop died: {self.dead_error!r}")
        fut: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            # NOTE: a caller that left cancels its future while the command waits here: the
            # command is skipped (setting a cancelled future's result raises, on this thread).
            if not fut.set_running_or_notify_cancel():
                return
            try:
                fut.set_result(fn())
            except BaseException as e:  # delivered to the caller, never kills the loop
                fut.set_exception(e)

        self._inbox.put(run)
        self._wakeup.set()
        return fut

    async def generate(
        self,
        prompt: str | list[int],
        params: SamplingParams,
        request_id: str | None = None,
        priority: int = 0,
    ) -> AsyncIterator[RequestOutput]:
        """Yields a RequestOutput per engine step that touched the request, the last one with
        finished=True. Raises InvalidRequestError before the first yield for bad input.
        Closing or cancelling the iterator aborts the request in the engine."""
        request_id = request_id or f"req-{next(self._ids)}"
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        self._streams[request_id] = stream

        def add() -> None:
            self.engine.add_request(request_id, prompt, params, priority)

        finished = False
        try:
            await asyncio.wrap_future(self._submit(add))
            while not finished:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            self._streams.pop(request_id, None)
            if not finished and not self.is_dead:
                self._submit(lambda: self.engine.abort_request(request_id))

    async def abort(self, request_id: str) -> None:
        """Abort from outside the stream: its reader gets a final output (finish "abort")."""

        def run() -> None:
            out = self.engine.abort_request(request_id)
            if out is not None:
                self._deliver(request_id, out)

        await asyncio.wrap_future(self._submit(run))

    async def call(self, fn: Callable[[LLMEngine], Any]) -> Any:
        """Run fn(engine) on the engine thread (for stats that must be read consistently)."""
        return await asyncio.wrap_future(self._submit(lambda: fn(self.engine)))

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @property
    def max_num_seqs(self) -> int:
        return self.engine.config.scheduler.max_num_seqs

    async def get_stats(self) -> EngineStats:
        def read(e: LLMEngine) -> EngineStats:
            kv = e.kv_cache_manager
            return EngineStats(
                e.scheduler.num_running,
                e.scheduler.num_waiting,
                kv.usage,
                e.scheduler.num_preemptions,
                kv.stats.queries,
                kv.stats.hits,
            )

        return await self.call(read)

    def check_health(self, max_stall_s: float = 30.0) -> None:
        """Raises EngineDeadError if the loop died or has not turned for max_stall_s."""
        if self.dead_error is not None:
            raise EngineDeadError(f"the engine loop died: {self.dead_error!r}")
        if time.monotonic() - self.last_progress > max_stall_s:
            raise EngineDeadError(f"the engine loop made no progress for {max_stall_s} s")

    def shutdown(self, timeout_s: float = 5.0) -> None:
        self._stopping = True
        self._wakeup.set()
        self._thread.join(timeout_s)

    # ---- engine thread ----------------------------------------------------------------
    def _run(
        self, config: EngineConfig | None, attention: str, built: concurrent.futures.Future
    ) -> None:
        try:
            engine = LLMEngine(config, attention)
        except BaseException as e:
            built.set_exception(e)
            return
        self.engine = engine
        built.set_result(engine)
        try:
            self._loop()
        finally:
            engine.close()

    def _loop(self) -> None:
        while not self._stopping:
            self.last_progress = time.monotonic()
            while True:
                try:
                    self._inbox.get_nowait()()
                except queue.Empty:
                    break
            if not self.engine.has_unfinished_requests():
                self._wakeup.wait(_IDLE_WAIT_S)
                self._wakeup.clear()
                continue
            try:
                self._num_steps += 1
                if self._num_steps == self._fault_step:
                    raise RuntimeError(f"fault injected at step {self._num_steps}")
                outputs = self.engine.step()
            except BaseException as e:  # the model step failed: the engine is unusable
                self._die(e)
                return
            for out in outputs:
                self._deliver(out.request_id, out)

    def _deliver(self, request_id: str, item: RequestOutput | BaseException) -> None:
        stream = self._streams.get(request_id)
        if stream is not None:
            stream.loop.call_soon_threadsafe(stream.queue.put_nowait, item)

    def _die(self, error: BaseException) -> None:
        self.dead_error = error
        dead = EngineDeadError(f"the engine loop died: {error!r}")
        for request_id in list(self._streams):
            self._deliver(request_id, dead)
        # Fail commands queued behind the fatal step so no caller waits forever.
        while True:
            try:
                self._inbox.get_nowait()()
            except queue.Empty:
                break
