"""Typed contracts between the scheduler and the model runner, one step at a time."""

from __future__ import annotations

from dataclasses import dataclass, field

from chatfleet.engine.request import Request


@dataclass
class ScheduledRequest:
    """One request's share of a step: feed tokens [start, start + num_new_tokens)."""

    request: Request  # read-only for the runner
    num_new_tokens: int
    block_ids: list[int]

    @property
    def start(self) -> int:
        return self.request.num_computed_tokens

    @property
    def samples(self) -> bool:
        """True when this chunk reaches the last known token, so a new token is sampled."""
        return self.start + self.num_new_tokens == self.request.num_tokens


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledRequest]
    # Requests that ended since the last step, so the runner can drop per-request state.
    finished_request_ids: set[str] = field(default_factory=set)

    @property
    def num_batched_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


@dataclass
class TokenLogprobs:
    """Log-probabilities of the sampled token and of the top alternatives."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # (token id, logprob), best first


@dataclass
class ModelRunnerOutput:
    """Sampled tokens for the requests whose chunk reached the end of their tokens."""

    sampled: dict[str, int]
    logprobs: dict[str, TokenLogprobs] = field(default_factory=dict)


@dataclass
class EngineCoreOutput:
    """What a step did to one request: new token(s) and whether it finished."""

    request: Request
    new_token_ids: list[int]
    new_logprobs: list[TokenLogprobs]
    finished: bool
