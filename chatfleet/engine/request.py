"""One mutable object per request, owned by the scheduler.

Token ids live in one list (prompt followed by output); counts and views are derived by
properties so nothing is stored twice.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Protocol

from chatfleet.errors import ContextLengthExceededError
from chatfleet.sampling_params import SamplingParams


class RequestStatus(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    # Everything from here on is finished.
    FINISHED_STOPPED = 3
    FINISHED_LENGTH = 4
    FINISHED_ABORTED = 5
    FINISHED_ERROR = 6  # the request cannot go on (its grammar refused every token)

    @property
    def is_finished(self) -> bool:
        return self >= RequestStatus.FINISHED_STOPPED

    @property
    def finish_reason(self) -> str | None:
        return _FINISH_REASONS.get(self)


_FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
    RequestStatus.FINISHED_ERROR: "error",
}


class TokenGrammar(Protocol):
    """A request's grammar state (structured.matcher.GrammarMatcher implements it)."""

    def accept(self, token_id: int) -> bool: ...

    @property
    def error(self) -> str: ...


@dataclass(eq=False)
class Request:
    """A single sequence being generated (one choice of an n > 1 request is one Request)."""

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    eos_token_ids: tuple[int, ...] = ()
    priority: int = 0  # lower is served first, like vLLM
    arrival_time: float = field(default_factory=time.monotonic)

    status: RequestStatus = RequestStatus.WAITING
    token_ids: list[int] = field(init=False)
    num_computed_tokens: int = 0
    num_cached_tokens: int = -1  # prompt tokens served from the prefix cache; -1 = not yet
    num_preemptions: int = 0
    block_hashes: list[int] = field(default_factory=list)  # of full blocks, filled lazily
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it
    first_scheduled_time: float | None = None
    grammar: TokenGrammar | None = None  # structured output: every token must keep it valid
    error: str | None = None  # why it finished with FINISHED_ERROR

    def __post_init__(self) -> None:
        self.token_ids = list(self.prompt_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - len(self.prompt_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[len(self.prompt_token_ids) :]

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    @property
    def num_tokens_to_compute(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    def append_output_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)


def check_fits(
    num_prompt_tokens: int,
    max_tokens: int,
    max_model_len: int,
    block_size: int,
    num_blocks: int,
    param: str = "prompt",
) -> None:
    """Raises ContextLengthExceededError when a request can never fit the context or the KV
    pool (shared with the fleet simulator, which runs the same admission rules)."""
    num = num_prompt_tokens
    if num + max_tokens > max_model_len:
        which = param if num >= max_model_len else "max_tokens"
        raise ContextLengthExceededError(
            f"This model's maximum context length is {max_model_len} tokens. However, "
            f"you requested {num + max_tokens} tokens ({num} in the prompt, "
            f"{max_tokens} for the completion).",
            param=which,
        )
    blocks_needed = -(-(num + max_tokens) // block_size)
    if blocks_needed > num_blocks:
        raise ContextLengthExceededError(
            f"the request needs {blocks_needed} KV blocks; the cache has {num_blocks}",
            param="max_tokens",
        )
