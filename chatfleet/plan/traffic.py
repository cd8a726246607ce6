"""What the simulated fleet is asked: conversations, when they start, how long each turn is.

A conversation's turn k sends the whole history (every earlier prompt and answer) plus the new
user message, so its prompt starts with the previous turn's tokens and hits the prefix cache
of a replica that served it. Lengths come from ShareGPT (the bench's loader), from a bench
result's raw records (the exact workload a real run served), or are fixed. Arrivals are a
Poisson process (the bench's own generator) or follow a diurnal curve.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from chatfleet.bench.load_runner import arrival_times_s
from chatfleet.bench.record import RequestRecord

SECONDS_PER_DAY = 86400.0


@dataclass(frozen=True)
class TurnShape:
    num_new_prompt_tokens: int  # tokens this turn adds to the history (user message, template)
    num_output_tokens: int
    # Those tokens themselves, when known (`prompts_from_bench`): the simulated prefix cache
    # then finds what real prompts share. Else they are made up, unique to the conversation.
    new_prompt_token_ids: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Conversation:
    conversation_id: str
    arrival_s: float  # when its first turn is sent
    turns: tuple[TurnShape, ...]
    think_time_s: float = 0.0  # from an answer's end to the next turn


def conversations(
    lengths: Sequence[tuple[TurnShape, ...]], arrivals_s: Sequence[float], think_time_s: float = 0
) -> list[Conversation]:
    """One conversation per arrival, turn lengths taken from `lengths` in order (cycling)."""
    return [
        Conversation(f"c{i}", at, lengths[i % len(lengths)], think_time_s)
        for i, at in enumerate(arrivals_s)
    ]


def poisson_arrivals(num: int, rate: float, seed: int) -> list[float]:
    """The bench's own arrival process (gamma gaps with shape 1), so a simulated run and a
    `chatfleet bench --request-rate R --seed S` run start their sessions at the same times."""
    return arrival_times_s(num, rate, 1.0, seed)


@dataclass(frozen=True)
class DiurnalCurve:
    """Traffic over a day: rate(t) = mean * exp(k cos(2 pi (t - peak) / day)) / I0(k).

    The shape has one smooth peak and mean `mean_rate` over a day for any k; k is chosen so
    that peak / mean = `peak_to_mean` (e^k / I0(k)), which works for any ratio >= 1.
    """

    mean_rate: float  # requests per second, averaged over the day
    peak_to_mean: float
    peak_hour: float = 20.0

    @property
    def k(self) -> float:
        if self.peak_to_mean < 1:
            raise ValueError("peak_to_mean must be >= 1")
        lo, hi = 0.0, 1.0
        while math.exp(hi) / float(np.i0(hi)) < self.peak_to_mean:
            hi *= 2
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (
                (mid, hi) if math.exp(mid) / float(np.i0(mid)) < self.peak_to_mean else (lo, mid)
            )
        return (lo + hi) / 2

    @property
    def peak_rate(self) -> float:
        return self.mean_rate * self.peak_to_mean

    def rate_at(self, t_s: float) -> float:
        k = self.k
        phase = 2 * math.pi * (t_s / SECONDS_PER_DAY - self.peak_hour / 24)
        return self.mean_rate * math.exp(k * math.cos(phase)) / float(np.i0(k))

    def arrivals(self, start_s: float, end_s: float, seed: int) -> list[float]:
        """A non-homogeneous Poisson process on [start_s, end_s) (Lewis-Shedler thinning)."""
        rng = random.Random(seed)
        top, t = self.peak_rate, start_s
        out: list[float] = []
        while True:
            t += rng.expovariate(top)
            if t >= end_s:
                return out
            if rng.random() * top < self.rate_at(t):
                out.append(t)


def fixed_lengths(num_turns: int, prompt_tokens: int, output_tokens: int) -> list[tuple]:
    return [tuple(TurnShape(prompt_tokens, output_tokens) for _ in range(num_turns))]


def scale_outputs(
    lengths: list[tuple[TurnShape, ...]], scale: float
) -> list[tuple[TurnShape, ...]]:
    """Every answer `scale` times as long (a sensitivity knob; applied after max_tokens)."""
    if scale == 1.0:
        return lengths
    return [
        tuple(
            dataclasses.replace(t, num_output_tokens=max(1, round(t.num_output_tokens * scale)))
            for t in turns
        )
        for turns in lengths
    ]


def with_system_prompt(
    lengths: list[tuple[TurnShape, ...]], num_tokens: int
) -> list[tuple[TurnShape, ...]]:
    """Every conversation's first turn starts with the same `num_tokens` more tokens."""
    if not num_tokens:
        return lengths
    return [
        (dataclasses.replace(t[0], num_new_prompt_tokens=t[0].num_new_prompt_tokens + num_tokens),)
        + tuple(t[1:])
        for t in lengths
    ]


def lengths_from_records(records: Sequence[RequestRecord]) -> list[tuple[TurnShape, ...]]:
    """Per bench session, its turns' lengths as the server counted them (successes only).

    A turn's new tokens are its prompt less the previous prompt and answer (the history it
    repeats); sessions are in session order.
    """
    by_session: dict[int, list[RequestRecord]] = defaultdict(list)
    for r in records:
        if r.is_success and r.prompt_tokens is not None and r.completion_tokens is not None:
            by_session[r.session_index].append(r)
    out = []
    for index in sorted(by_session):
        turns, history = [], 0
        for r in sorted(by_session[index], key=lambda r: r.turn_index):
            assert r.prompt_tokens is not None and r.completion_tokens is not None
            turns.append(TurnShape(max(1, r.prompt_tokens - history), max(1, r.completion_tokens)))
            history = r.prompt_tokens + r.completion_tokens
        out.append(tuple(turns))
    return out


def prompts_from_bench(
    config: dict, records: Sequence[RequestRecord], tokenizer: Callable[[], object]
) -> list[tuple[TurnShape, ...]]:
    """`lengths_from_records`, with every first turn's real token ids: the bench's workload
    rebuilt from its result's config (dataset, seed, ...; deterministic) and put through the
    chat template, so that prompts sharing a prefix (ShareGPT has many: one instruction, other
    inputs) hit the simulated prefix caches as they hit the real ones. A turn whose tokens do
    not count what the server counted keeps made-up ones."""
    from chatfleet.bench.workload import WorkloadParams, build_messages, build_workload

    names = {f.name for f in dataclasses.fields(WorkloadParams)}
    tok = tokenizer()
    params = WorkloadParams(**{k: v for k, v in config.items() if k in names})
    sessions = build_workload(params, lambda: tok)  # type: ignore[arg-type,return-value]
    indices = sorted(
        {r.session_index for r in records if r.is_success and r.prompt_tokens is not None}
    )
    out = []
    for index, turns in zip(indices, lengths_from_records(records), strict=True):
        ids = tuple(tok.apply_chat_template(build_messages(sessions[index], 0, [])))  # type: ignore[attr-defined]
        first = turns[0]
        if len(ids) == first.num_new_prompt_tokens:
            first = dataclasses.replace(first, new_prompt_token_ids=ids)
        out.append((first, *turns[1:]))
    return out


def sharegpt_lengths(
    num: int, num_turns: int, max_tokens: int, seed: int, tokenizer: Callable[[], object]
) -> list[tuple[TurnShape, ...]]:
    """Turn lengths of `num` ShareGPT conversations, picked and filtered by the bench's own
    loader; answers are the recorded answers' lengths capped at `max_tokens`."""
    from chatfleet.bench.workload import WorkloadParams, build_workload

    dataset = "multi-turn" if num_turns > 1 else "sharegpt"
    params = WorkloadParams(dataset, num, seed, max_tokens, num_turns=num_turns)
    tok = tokenizer()
    sessions = build_workload(params, lambda: tok)  # type: ignore[arg-type,return-value]
    first = _template_overhead(tok, 1)
    per_turn = _template_overhead(tok, 2) - first
    out = []
    for s in sessions:
        turns = []
        for k, t in enumerate(s.turns):
            text = len(tok.encode(t.user_text))  # type: ignore[attr-defined]
            turns.append(TurnShape(text + (first if k == 0 else per_turn), t.max_tokens))
        out.append(tuple(turns))
    return out


def _template_overhead(tok: object, num_turns: int) -> int:
    """Chat-template tokens around `num_turns` one-token user messages (and the answers
    between them), i.e. what the template adds to the text."""
    messages: list[dict[str, str]] = []
    for k in range(num_turns):
        if k:
            messages.append({"role": "assistant", "content": "a"})
        messages.append({"role": "user", "content": "a"})
    n = len(tok.apply_chat_template(messages))  # type: ignore[attr-defined]
    return n - (2 * num_turns - 1)
