"""Continuous batching by token counts.

Each step hands every request `min(remaining tokens, token budget)` tokens, running requests
first, then waiting ones. A request is "prefilling" only because num_computed_tokens <
num_tokens; chunked prefill and mixed prefill/decode steps need no special phase.
"""

from __future__ import annotations

import heapq
import itertools
import time
from dataclasses import dataclass

from chatfleet.config.engine_config import SchedulerConfig
from chatfleet.engine.kv_cache_manager import KVCacheManager
from chatfleet.engine.request import Request, RequestStatus
from chatfleet.outputs import TokenLogprobs
from chatfleet.step import ModelRunnerOutput, ScheduledRequest, SchedulerOutput


@dataclass
class EngineCoreOutput:
    """What a step did to one request: new token(s) and whether it finished."""

    request: Request
    new_token_ids: list[int]
    new_logprobs: list[TokenLogprobs]
    finished: bool


class Scheduler:
    """Owns the waiting queue, the running list and the KV cache manager."""

    def __init__(self, config: SchedulerConfig, kv_cache_manager: KVCacheManager) -> None:
        self.config = config
        self.kv = kv_cache_manager
        self.requests: dict[str, Request] = {}
        self.running: list[Request] = []
        # Heap of (priority, arrival, seq, request): FCFS within a priority. Aborted waiting
        # requests are skipped lazily when they reach the top.
        self._waiting: list[tuple[int, float, int, Request]] = []
        self._seq = itertools.count()
        self._finished_ids: set[str] = set()
        self.num_preemptions = 0

    # ---- queue management -------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        self.requests[request.request_id] = request
        self._push_waiting(request)

    def _push_waiting(self, request: Request) -> None:
        item = (request.priority, request.arrival_time, next(self._seq), request)
        heapq.heappush(self._waiting, item)

    @property
    def num_waiting(self) -> int:
        return sum(1 for *_, r in self._waiting if not r.is_finished)

    @property
    def num_running(self) -> int:
        return len(self.running)

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    def finish_requests(self, request_ids: list[str], status: RequestStatus) -> list[Request]:
        """Finish (or abort) requests wherever they are; frees their blocks. Unknown ids are
        ignored (a request may have finished on its own meanwhile)."""
        done = []
        for request_id in request_ids:
            request = self.requests.pop(request_id, None)
            if request is None:
                continue
            if request.status == RequestStatus.RUNNING:
                self.running.remove(request)
            request.status = status
            self.kv.free(request)
            self._finished_ids.add(request_id)
            done.append(request)
        return done

    # ---- one step ---------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        """Pick this step's requests and token counts; may preempt (by recompute)."""
        budget = self.config.max_num_batched_tokens
        scheduled: list[ScheduledRequest] = []
        preempted = False
        self.running.sort(key=lambda r: (r.priority, r.arrival_time))
        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            num_new = min(request.num_tokens_to_compute, budget, _to_seam(request))
            block_ids = self.kv.allocate_slots(request, num_new)
            while block_ids is None:
                victim = self.running[-1]
                self._preempt(victim)
                preempted = True
                if victim is request:
                    break
                block_ids = self.kv.allocate_slots(request, num_new)
            if block_ids is None:
                break
            scheduled.append(ScheduledRequest(request, num_new, block_ids))
            budget -= num_new
            i += 1
        if not preempted:
            budget = self._admit_waiting(scheduled, budget)
        finished, self._finished_ids = self._finished_ids, set()
        return SchedulerOutput(scheduled, finished)

    def _admit_waiting(self, scheduled: list[ScheduledRequest], budget: int) -> int:
        while self._waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            request = self._waiting[0][3]
            if request.is_finished:
                heapq.heappop(self._waiting)
                continue
            hits, num_hit_tokens = self.kv.get_computed_blocks(request)
            num_new = min(request.num_tokens - num_hit_tokens, budget)
            if num_hit_tokens < request.num_prompt_tokens:
                num_new = min(num_new, request.num_prompt_tokens - num_hit_tokens)
            block_ids = self.kv.allocate_slots(request, num_new, hits, num_hit_tokens)
            if block_ids is None:
                break
            heapq.heappop(self._waiting)
            request.num_computed_tokens = num_hit_tokens
            if request.num_cached_tokens < 0:
                # NOTE: a continued reply's first output tokens are prefilled with its prompt
                # and may hit the cache too; only the prompt's hits are cached prompt tokens.
                request.num_cached_tokens = min(num_hit_tokens, request.num_prompt_tokens)
            if request.first_scheduled_time is None:
                request.first_scheduled_time = time.monotonic()
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            scheduled.append(ScheduledRequest(request, num_new, block_ids))
            budget -= num_new
        return budget

    def _preempt(self, request: Request) -> None:
        """Free a running request's blocks and requeue it; it will recompute (cheaply, when
        its blocks are still in the prefix cache)."""
        self.running.remove(request)
        self.kv.free(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.num_preemptions += 1
        self._push_waiting(request)

    def update_from_output(
        self, scheduler_output: SchedulerOutput, runner_output: ModelRunnerOutput
    ) -> list[EngineCoreOutput]:
        """Advance computed counts, append sampled tokens, apply token-level stops."""
        outputs = []
        for item in scheduler_output.scheduled:
            request = self.requests.get(item.request.request_id)
            if request is None:
                continue  # aborted while the step ran
            request.num_computed_tokens += item.num_new_tokens
            token_id = runner_output.sampled.get(request.request_id)
            if token_id is None:
                continue  # a prefill chunk that did not reach the end
            if request.grammar is not None and not request.grammar.accept(token_id):
                # NOTE: the mask allowed no token the grammar accepts (a dead end); the
                # token is dropped and the request ends with an error, the batch goes on.
                request.error = request.grammar.error
                self.finish_requests([request.request_id], RequestStatus.FINISHED_ERROR)
                outputs.append(EngineCoreOutput(request, [], [], True))
                continue
            request.append_output_token(token_id)
            status = self._check_stop(request, token_id)
            logprobs = runner_output.logprobs.get(request.request_id)
            if status is not None:
                self.finish_requests([request.request_id], status)
            outputs.append(
                EngineCoreOutput(
                    request, [token_id], [logprobs] if logprobs else [], status is not None
                )
            )
        return outputs

    def _check_stop(self, request: Request, token_id: int) -> RequestStatus | None:
        params = request.sampling_params
        if token_id in params.stop_token_ids:
            request.stop_reason = token_id
            return RequestStatus.FINISHED_STOPPED
        if (
            not params.ignore_eos
            and token_id in request.eos_token_ids
            and request.num_output_tokens > params.min_tokens
        ):
            return RequestStatus.FINISHED_STOPPED
        if request.num_output_tokens >= params.max_tokens:
            return RequestStatus.FINISHED_LENGTH
        if request.num_tokens >= self.config.max_model_len:
            return RequestStatus.FINISHED_LENGTH
        return None


def _to_seam(request: Request) -> int:
    """A chunk ends where the prompt does: output tokens computed again (a preempted request,
    a continued reply) are then attended one row at a time, as they were when decoded, so
    they give the same bits (see model/attention/cpu_paged.py)."""
    if request.num_computed_tokens < request.num_prompt_tokens:
        return request.num_prompt_tokens - request.num_computed_tokens
    return request.num_tokens_to_compute
