"""The typed contract of one engine step, between the scheduler (engine/) and the model
runner (model/): neither package imports the other's modules for it.

    Scheduler.schedule() -> SchedulerOutput -> ModelRunner.execute() -> ModelRunnerOutput
        -> Scheduler.update_from_output()

The runner reads each scheduled request through `StepRequest`, the read-only view of the
engine's `Request` that it needs.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from chatfleet.outputs import TokenLogprobs
from chatfleet.sampling_params import SamplingParams

if TYPE_CHECKING:  # the scheduler side stays free of torch
    import torch


class StepRequest(Protocol):
    """What the runner reads of a request (engine.request.Request implements it)."""

    @property
    def request_id(self) -> str: ...

    @property
    def sampling_params(self) -> SamplingParams: ...

    @property
    def eos_token_ids(self) -> Sequence[int]: ...

    @property
    def token_ids(self) -> list[int]: ...

    @property
    def prompt_token_ids(self) -> list[int]: ...

    @property
    def output_token_ids(self) -> list[int]: ...

    @property
    def num_computed_tokens(self) -> int: ...

    @property
    def num_tokens(self) -> int: ...

    @property
    def num_output_tokens(self) -> int: ...


@dataclass
class ScheduledRequest:
    """One request's share of a step: feed tokens [start, start + num_new_tokens)."""

    request: StepRequest  # read-only for the runner
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
class TokenMasks:
    """The tokens each grammar-constrained request may sample this step, being filled while
    the forward pass runs: row i of the bitmask belongs to request_ids[i]."""

    request_ids: list[str]
    bitmask: concurrent.futures.Future[torch.Tensor]  # [rows, ceil(vocab / 32)] int32

    def wait(self) -> dict[str, torch.Tensor]:
        """Each request's bitmask row, once filled (a fill failure raises here)."""
        mask = self.bitmask.result()
        return {request_id: mask[i] for i, request_id in enumerate(self.request_ids)}


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledRequest]
    # Requests that ended since the last step, so the runner can drop per-request state.
    finished_request_ids: set[str] = field(default_factory=set)
    token_masks: TokenMasks | None = None  # set by the engine when a grammar row samples

    @property
    def num_batched_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


@dataclass
class ModelRunnerOutput:
    """Sampled tokens for the requests whose chunk reached the end of their tokens."""

    sampled: dict[str, int]
    logprobs: dict[str, TokenLogprobs] = field(default_factory=dict)
