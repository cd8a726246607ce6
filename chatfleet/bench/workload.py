"""Datasets -> sessions: what the load generator sends, turn by turn.

Every dataset becomes a list of `Session`s. Single-turn datasets give one-turn sessions; a
multi-turn session's turn k carries the whole history, with the answers the server actually
gave (known only at run time), so requests are built by `request_for` as the run goes.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from chatfleet.bench.datasets import (
    ShareGPTConversation,
    TokenEncoder,
    random_text,
    shuffled_sharegpt,
)
from chatfleet.bench.json_schemas import SCHEMAS

# ShareGPT filters as in vLLM's serving benchmark: drop near-empty turns, and prompts or
# conversations too long for a small model's context.
MIN_TURN_TOKENS = 4
MAX_PROMPT_TOKENS = 1024
MAX_TOTAL_TOKENS = 2048


@dataclass(frozen=True)
class TurnSpec:
    user_text: str
    max_tokens: int  # the reference answer's length capped by --max-tokens
    response_format: dict[str, Any] | None = None  # sent as is (structured output)


@dataclass(frozen=True)
class Session:
    """One conversation; its turns are sent in order, each after the previous answer."""

    conversation_id: str
    turns: tuple[TurnSpec, ...]
    system_prompt: str | None = None


@dataclass(frozen=True)
class BenchRequest:
    """One chat completion to send."""

    session_index: int
    turn_index: int
    messages: list[dict[str, str]]
    max_tokens: int
    conversation_id: str = ""  # the dataset's id, for tracing a request back to its source
    response_format: dict[str, Any] | None = None


@dataclass(frozen=True)
class WorkloadParams:
    """Dataset knobs from the command line; each dataset reads the ones it needs."""

    dataset: str
    num_prompts: int  # requests; conversations for multi-turn
    seed: int = 0
    max_tokens: int = 256
    input_len: int = 256  # words (~tokens) per synthetic prompt or question
    output_len: int = 128
    prefix_len: int = 1024  # words of each shared-prefix system prompt
    num_groups: int = 4
    num_turns: int = 2


def build_messages(session: Session, turn_index: int, answers: Sequence[str]) -> list[dict]:
    """Chat history for `turn_index`: system, (user, assistant) per earlier turn, then user.

    `answers[k]` is what the server replied to turn k; one per earlier turn is required.
    """
    assert len(answers) == turn_index, "one answer per earlier turn"
    messages = []
    if session.system_prompt is not None:
        messages.append({"role": "system", "content": session.system_prompt})
    for turn, answer in zip(session.turns, answers, strict=False):
        messages.append({"role": "user", "content": turn.user_text})
        messages.append({"role": "assistant", "content": answer})
    messages.append({"role": "user", "content": session.turns[turn_index].user_text})
    return messages


def request_for(
    session: Session, session_index: int, turn_index: int, answers: Sequence[str]
) -> BenchRequest:
    messages = build_messages(session, turn_index, answers)
    turn = session.turns[turn_index]
    return BenchRequest(
        session_index,
        turn_index,
        messages,
        turn.max_tokens,
        session.conversation_id,
        turn.response_format,
    )


def replay_lengths(sessions: list[Session], lengths: dict[tuple[int, int], int]) -> list[Session]:
    """The sessions with each turn's max_tokens set to the output length another run got
    for it ((session index, turn index) -> completion tokens; turns not in it unchanged).
    With ignore_eos, a run then generates exactly those lengths: a comparison of two servers
    or settings whose replies differ in length is made on equal work."""
    out = []
    for i, session in enumerate(sessions):
        turns = tuple(
            dataclasses.replace(turn, max_tokens=max(1, lengths.get((i, k), turn.max_tokens)))
            for k, turn in enumerate(session.turns)
        )
        out.append(dataclasses.replace(session, turns=turns))
    return out


def _random(p: WorkloadParams, tokenizer: Callable[[], TokenEncoder]) -> list[Session]:
    rng = random.Random(p.seed)
    max_tokens = min(p.output_len, p.max_tokens)
    return [
        Session(f"random-{i}", (TurnSpec(random_text(rng, p.input_len), max_tokens),))
        for i in range(p.num_prompts)
    ]


def _shared_prefix(p: WorkloadParams, tokenizer: Callable[[], TokenEncoder]) -> list[Session]:
    rng = random.Random(p.seed)
    prefixes = [random_text(rng, p.prefix_len) for _ in range(p.num_groups)]
    max_tokens = min(p.output_len, p.max_tokens)
    sessions = [
        Session(
            f"group{i % p.num_groups}-{i}",
            (TurnSpec(random_text(rng, p.input_len), max_tokens),),
            system_prompt=prefixes[i % p.num_groups],
        )
        for i in range(p.num_prompts)
    ]
    # NOTE: shuffled so groups interleave as in real traffic, not one group after another.
    rng.shuffle(sessions)
    return sessions


def _sharegpt_turns(
    conv: ShareGPTConversation, num_turns: int, max_tokens: int, tok: TokenEncoder
) -> tuple[TurnSpec, ...] | None:
    """The first `num_turns` user turns with capped answer lengths; None if filtered out."""
    specs, total = [], 0
    for k in range(num_turns):
        user, answer = conv.turns[2 * k], conv.turns[2 * k + 1]
        prompt_len, answer_len = len(tok.encode(user.text)), len(tok.encode(answer.text))
        if min(prompt_len, answer_len) < MIN_TURN_TOKENS or prompt_len > MAX_PROMPT_TOKENS:
            return None
        total += prompt_len + min(answer_len, max_tokens)
        specs.append(TurnSpec(user.text, min(answer_len, max_tokens)))
    return tuple(specs) if total <= MAX_TOTAL_TOKENS else None


def _sharegpt_sessions(
    p: WorkloadParams, num_turns: int, tokenizer: Callable[[], TokenEncoder]
) -> list[Session]:
    tok = tokenizer()
    sessions = []
    for conv in shuffled_sharegpt(p.seed, min_rounds=num_turns):
        turns = _sharegpt_turns(conv, num_turns, p.max_tokens, tok)
        if turns is not None:
            sessions.append(Session(conv.conversation_id, turns))
            if len(sessions) == p.num_prompts:
                return sessions
    raise ValueError(f"only {len(sessions)} ShareGPT conversations fit; asked {p.num_prompts}")


def _sharegpt(p: WorkloadParams, tokenizer: Callable[[], TokenEncoder]) -> list[Session]:
    return _sharegpt_sessions(p, 1, tokenizer)


def _multi_turn(p: WorkloadParams, tokenizer: Callable[[], TokenEncoder]) -> list[Session]:
    return _sharegpt_sessions(p, p.num_turns, tokenizer)


def _json_turns(p: WorkloadParams, with_schema: bool) -> list[Session]:
    """Requests for JSON, one schema each (round robin); the same prompts with or without
    the schema enforced, so a pair of runs isolates what the grammar costs.

    Each prompt opens with its seed and request number, marked differently on the two sides,
    so neither run's prompts are in the prefix cache when the other (or another seed) runs.
    """
    sessions = []
    mark = "#" if with_schema else "@"
    for i in range(p.num_prompts):
        case = SCHEMAS[i % len(SCHEMAS)]
        fmt = {
            "type": "json_schema",
            "json_schema": {"name": case.name, "schema": case.schema, "strict": True},
        }
        fields = ", ".join(case.schema["properties"])
        text = f"{mark}{p.seed}.{i} {case.prompt} Reply in JSON with the fields {fields}."
        turn = TurnSpec(text, p.max_tokens, fmt if with_schema else None)
        sessions.append(Session(f"{case.name}-{i}", (turn,)))
    return sessions


# The tokenizer is a factory: only the ShareGPT datasets need one, and loading it costs time.
_BUILDERS: dict[str, Callable[[WorkloadParams, Callable[[], TokenEncoder]], list[Session]]] = {
    "sharegpt": _sharegpt,
    "random": _random,
    "shared-prefix": _shared_prefix,
    "multi-turn": _multi_turn,
    "json-schema": lambda p, _: _json_turns(p, with_schema=True),
    "json-prompts": lambda p, _: _json_turns(p, with_schema=False),
}
DATASETS = tuple(_BUILDERS)


def build_workload(params: WorkloadParams, tokenizer: Callable[[], TokenEncoder]) -> list[Session]:
    """Sessions for `params.dataset`; ValueError if the dataset cannot supply enough."""
    if params.dataset not in _BUILDERS:
        raise ValueError(f"unknown dataset {params.dataset!r}; choose from {DATASETS}")
    return _BUILDERS[params.dataset](params, tokenizer)
