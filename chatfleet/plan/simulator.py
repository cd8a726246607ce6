"""Discrete-event simulation of a fleet serving conversations; deterministic for a seed.

Events, in time order (ties in the order they were scheduled):
    turn     a conversation sends its next turn: rate limit, fit check, router
    enqueue  the request reaches its replica's engine (after the ingress overhead)
    step     a replica's step (step model + per-step serving overhead, overhead.py) ends:
             tokens go out (after the egress overhead), finished
             turns schedule their conversation's next turn, the replica starts its next step
    probe    the router scrapes every replica's load
Requests come out as the bench's `RequestRecord`s, so `chatfleet.bench.summary.summarize`
gives the same summary a real `chatfleet bench` run reports.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chatfleet.bench.record import RequestRecord, round_s
from chatfleet.bench.summary import BenchSummary, SloParams, summarize
from chatfleet.config.router_config import RouterConfig
from chatfleet.engine.request import Request, check_fits
from chatfleet.errors import ContextLengthExceededError
from chatfleet.gateway.limits.base import KeyLimits, gcra
from chatfleet.plan.fleet import SimRouter
from chatfleet.plan.overhead import ServingOverhead
from chatfleet.plan.sim_replica import ReplicaSpec, SimReplica
from chatfleet.plan.step_mix import StepMix
from chatfleet.plan.step_model import StepTimeModel
from chatfleet.plan.traffic import Conversation
from chatfleet.sampling_params import SamplingParams
from chatfleet.step import StepRequest


def _random_tokens(rng: random.Random, num: int) -> list[int]:
    """Made-up token ids below 2**15: only their equality (prefix hits) matters."""
    return [t & 0x7FFF for t in memoryview(rng.randbytes(2 * num)).cast("H").tolist()]


@functools.lru_cache(maxsize=4096)
def _sampling_params(max_tokens: int) -> SamplingParams:
    """Shared by requests (the engine only reads them); validating each one costs time."""
    return SamplingParams(max_tokens=max_tokens, ignore_eos=True)


@dataclass(frozen=True)
class FleetSpec:
    num_replicas: int
    replica: ReplicaSpec
    router: RouterConfig = field(default_factory=RouterConfig)
    overhead: ServingOverhead = field(default_factory=ServingOverhead)
    rate_limit: KeyLimits | None = None  # per conversation (one user each): rpm and tpm


@dataclass
class SimResult:
    records: list[RequestRecord]
    replicas: list[dict[str, Any]]  # per replica: steps, busy time, preemptions, cache counts
    router_query_blocks: int
    router_hit_blocks: int
    steps: StepMix = field(default_factory=StepMix)  # every replica's steps, summed

    @property
    def prefix_hit_rate(self) -> float:
        """Prompt tokens served from the replicas' prefix caches / prompt tokens admitted."""
        queries = sum(r["prefix_cache_queries"] for r in self.replicas)
        hits = sum(r["prefix_cache_hits"] for r in self.replicas)
        return hits / queries if queries else 0.0

    def summary(self, slo: SloParams | None = None) -> BenchSummary:
        return summarize(self.records, slo or SloParams())


@dataclass
class _ConversationState:
    conversation: Conversation
    index: int
    rng: random.Random
    history: list[int] = field(default_factory=list)  # every token of the turns so far
    next_turn: int = 0
    request_tat: float | None = None  # GCRA buckets of this conversation's user
    token_tat: float | None = None


@dataclass
class _InFlight:
    state: _ConversationState
    turn_index: int
    sent_s: float
    replica_index: int
    request: Request
    token_times_s: list[float] = field(default_factory=list)


class Simulation:
    def __init__(
        self,
        conversations: list[Conversation],
        fleet: FleetSpec,
        step_model: StepTimeModel,
        seed: int = 0,
        shared_prefix_tokens: int = 0,
    ) -> None:
        self.fleet = fleet
        # Every conversation starts with the same tokens (the chat template's system prompt).
        self._shared_prefix = _random_tokens(random.Random(f"{seed}:shared"), shared_prefix_tokens)
        ids = [f"replica-{i:04d}" for i in range(fleet.num_replicas)]
        self.replicas = [SimReplica(rid, fleet.replica, step_model, fleet.overhead) for rid in ids]
        self._index_of = {rid: i for i, rid in enumerate(ids)}
        self.router = SimRouter(fleet.router, ids)
        self.records: list[RequestRecord] = []
        self._states = [
            _ConversationState(c, i, random.Random(f"{seed}:{c.conversation_id}"))
            for i, c in enumerate(conversations)
        ]
        self._in_flight: dict[str, _InFlight] = {}
        self._events: list[tuple[float, int, str, Any]] = []
        self._seq = itertools.count()
        self._num_live = 0  # events other than probes

    def _push(self, t: float, kind: str, arg: Any = None) -> None:
        heapq.heappush(self._events, (t, next(self._seq), kind, arg))
        self._num_live += kind != "probe"

    def run(self) -> SimResult:
        self._push(0.0, "probe")  # first: replicas are eligible only after a good probe
        for state in self._states:
            self._push(state.conversation.arrival_s, "turn", state)
        handlers: dict[str, Callable[[float, Any], None]] = {
            "turn": self._on_turn,
            "enqueue": self._on_enqueue,
            "step": self._on_step,
            "probe": self._on_probe,
        }
        while self._events:
            t, _, kind, arg = heapq.heappop(self._events)
            self._num_live -= kind != "probe"
            handlers[kind](t, arg)
        self.records.sort(key=lambda r: (r.start_s, r.session_index, r.turn_index))
        return SimResult(
            self.records,
            [self._replica_stats(r) for r in self.replicas],
            self.router.num_query_blocks,
            self.router.num_hit_blocks,
            StepMix.total(r.stats.steps for r in self.replicas),
        )

    # ---- events -------------------------------------------------------------------------
    def _on_probe(self, t: float, _: Any) -> None:
        self.router.probe({r.replica_id: r.load() for r in self.replicas}, t)
        if self._num_live:
            self._push(t + self.fleet.router.health.probe_interval_s, "probe")

    def _on_turn(self, t: float, state: _ConversationState) -> None:
        k = state.next_turn
        turn = state.conversation.turns[k]
        new = turn.num_new_prompt_tokens
        if turn.new_prompt_token_ids is not None:  # real tokens (the template's included)
            prompt = state.history + list(turn.new_prompt_token_ids)
        elif state.history:
            prompt = state.history + _random_tokens(state.rng, new)
        else:  # a first turn starts with the shared prefix (leaving it one token of its own)
            shared = self._shared_prefix[: new - 1]
            prompt = shared + _random_tokens(state.rng, new - len(shared))
        max_tokens = turn.num_output_tokens
        spec = self.fleet.replica
        if not self._within_rate_limit(state, t, len(prompt) + max_tokens):
            self._refuse(state, k, t, max_tokens, 429, "rate_limited")
            return
        try:
            check_fits(
                len(prompt),
                max_tokens,
                spec.scheduler.max_model_len,
                spec.block_size,
                spec.num_blocks,
            )
        except ContextLengthExceededError:
            self._refuse(state, k, t, max_tokens, 400, "context_length_exceeded")
            return
        rid = self.router.route(prompt, state.conversation.conversation_id, self._can_admit)
        if rid is None:
            self._refuse(state, k, t, max_tokens, 503, "overloaded")
            return
        enqueue_s = t + self.fleet.overhead.ingress_s
        params = _sampling_params(max_tokens)
        request_id = f"{state.conversation.conversation_id}/{k}"
        request = Request(request_id, prompt, params, arrival_time=enqueue_s)
        self._in_flight[request_id] = _InFlight(state, k, t, self._index_of[rid], request)
        self._push(enqueue_s, "enqueue", request_id)

    def _on_enqueue(self, t: float, request_id: str) -> None:
        flight = self._in_flight[request_id]
        replica = self.replicas[flight.replica_index]
        replica.add(flight.request)
        if not replica.is_busy:
            self._start_step(flight.replica_index, t)

    def _on_step(self, t: float, index: int) -> None:
        replica = self.replicas[index]
        egress = self.fleet.overhead.egress_s
        for out in replica.finish_step(self._next_token):
            flight = self._in_flight[out.request.request_id]
            flight.token_times_s.append(t + egress)
            if out.finished:
                self._finish(flight, t + egress)
        self._start_step(index, t)

    # ---- helpers ------------------------------------------------------------------------
    def _start_step(self, index: int, t: float) -> None:
        seconds = self.replicas[index].start_step()
        if seconds is not None:
            self._push(t + seconds, "step", index)

    def _can_admit(self, replica_id: str) -> bool:
        return self.replicas[self._index_of[replica_id]].can_admit()

    @staticmethod
    def _next_token(request: StepRequest) -> int:
        """A made-up sampled token. NOTE: its value does not matter: a later turn repeats
        the history exactly, and no other conversation can match it, because prefix hashes
        chain from the first block (random prompt tokens). A random draw per token cost ~10%
        of a simulation."""
        return request.num_tokens & 0x7FFF

    def _within_rate_limit(self, state: _ConversationState, t: float, num_tokens: int) -> bool:
        limits = self.fleet.rate_limit
        if limits is None:
            return True
        req = gcra(state.request_tat, t, limits.rpm, 1)
        tok = gcra(state.token_tat, t, limits.tpm, num_tokens)
        if not (req.is_allowed and tok.is_allowed):
            return False
        state.request_tat, state.token_tat = req.tat, tok.tat
        return True

    def _finish(self, flight: _InFlight, end_s: float) -> None:
        del self._in_flight[flight.request.request_id]
        self.router.release(self.replicas[flight.replica_index].replica_id)
        request, start = flight.request, flight.sent_s
        self.records.append(
            RequestRecord(
                session_index=flight.state.index,
                turn_index=flight.turn_index,
                start_s=round_s(start),
                e2e_s=round_s(end_s - start),
                chunk_times_s=tuple(round_s(x - start) for x in flight.token_times_s),
                max_tokens=request.sampling_params.max_tokens,
                status_code=200,
                prompt_tokens=request.num_prompt_tokens,
                completion_tokens=request.num_output_tokens,
                token_count_source="usage",
            )
        )
        state = flight.state
        state.history = list(request.token_ids)
        state.next_turn = flight.turn_index + 1
        if state.next_turn < len(state.conversation.turns):
            self._push(end_s + state.conversation.think_time_s, "turn", state)

    def _refuse(
        self, state: _ConversationState, k: int, t: float, max_tokens: int, status: int, why: str
    ) -> None:
        """A refused turn ends its conversation, as a failed turn ends a bench session."""
        self.records.append(
            RequestRecord(state.index, k, round_s(t), 0.0, (), max_tokens, status, why)
        )

    def _replica_stats(self, replica: SimReplica) -> dict[str, Any]:
        return {
            "replica_id": replica.replica_id,
            "num_steps": replica.stats.num_steps,
            "busy_s": replica.stats.busy_s,
            "max_kv_usage": replica.stats.max_kv_usage,
            "num_preemptions": replica.scheduler.num_preemptions,
            "prefix_cache_queries": replica.kv.stats.queries,
            "prefix_cache_hits": replica.kv.stats.hits,
            "steps": replica.stats.steps.summary(),
        }


def simulate(
    conversations: list[Conversation],
    fleet: FleetSpec,
    step_model: StepTimeModel,
    seed: int = 0,
    shared_prefix_tokens: int = 0,
) -> SimResult:
    return Simulation(conversations, fleet, step_model, seed, shared_prefix_tokens).run()
