"""The prompt for a reply: the stored history, trimmed from the oldest turn to fit.

    history:  [sys] u1 a1 u2 a2 u3 a3 ... uN        (N = the message being answered)
    kept:     [sys]          u2 a2 u3 a3 ... uN      prompt + max_tokens <= max_model_len
                             ^ context_start (a user message's seq; stored per conversation)

Turns are dropped whole (a kept history starts at a user message) and the system prompt
always stays. Once trimming is needed, `slack` more tokens are cut than necessary and the cut
point is stored, so the next turns send the same prefix and hit the replica's prefix cache
instead of shifting the whole prompt by one turn each time.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from chatfleet.errors import ContextLengthExceededError

MIN_REPLY_TOKENS = 16  # below this a reply is not worth starting: the request is refused


class TokenCounter(ABC):
    """Counts prompt tokens the way the upstream will."""

    @abstractmethod
    def count_chat(self, messages: list[dict[str, Any]]) -> int:
        """Tokens of the prompt the chat template makes from `messages` (with the
        generation prompt); an assistant's tool calls count as their JSON."""

    @abstractmethod
    def count_text(self, text: str) -> int: ...

    def count_tools(self, tools: Any, tool_choice: Any) -> int:
        """Tokens the tools' description adds to the prompt: none with tool_choice "none"
        (the upstream then leaves them out), else their JSON."""
        if not tools or tool_choice == "none":
            return 0
        return self.count_text(json.dumps(tools))


class TemplateTokenCounter(TokenCounter):
    """The model's own tokenizer and chat template (exact for a chatfleet upstream)."""

    def __init__(self, model_path: str | None) -> None:
        from chatfleet.modelfile.tokenizer import Tokenizer

        self.tokenizer = Tokenizer.from_model_path(model_path)

    def count_chat(self, messages: list[dict[str, Any]]) -> int:
        return len(self.tokenizer.apply_chat_template(_calls_as_text(messages)))

    def count_text(self, text: str) -> int:
        return len(self.tokenizer.encode(text))


class CharTokenCounter(TokenCounter):
    """An upper-bound guess for upstreams whose tokenizer is unknown: 1 token per 3 chars."""

    def count_chat(self, messages: list[dict[str, Any]]) -> int:
        return sum(8 + self.count_text(m["content"]) for m in _calls_as_text(messages)) + 8

    def count_text(self, text: str) -> int:
        return -(-len(text) // 3)


def _calls_as_text(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The messages with each assistant's tool calls written after its text, as JSON: about
    what the upstream's template writes for them."""
    out = []
    for m in messages:
        calls = m.get("tool_calls")
        text = m["content"] + ("\n" + json.dumps(calls) if calls else "")
        out.append({"role": m["role"], "content": text})
    return out


COUNTERS: dict[str, Callable[[str | None], TokenCounter]] = {
    "template": TemplateTokenCounter,
    "chars": lambda _: CharTokenCounter(),
}


@dataclass(frozen=True)
class Turn:
    seq: int  # store order; the new message being sent has none yet (use a large value)
    role: str
    content: str
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # an assistant's calls


@dataclass(frozen=True)
class PromptPlan:
    messages: list[dict[str, Any]]  # to send upstream
    num_prompt_tokens: int  # as counted here; the upstream reports the exact number
    max_tokens: int
    context_start: int  # seq of the oldest turn kept
    num_dropped: int  # turns of history left out


def _messages(system_prompt: str, turns: Sequence[Turn]) -> list[dict[str, Any]]:
    head: list[dict[str, Any]] = [{"role": "system", "content": system_prompt}]
    messages = head if system_prompt else []
    for t in turns:
        message: dict[str, Any] = {"role": t.role, "content": t.content}
        if t.tool_calls:
            message["tool_calls"] = t.tool_calls
        messages.append(message)
    return messages


def plan_prompt(
    counter: TokenCounter,
    system_prompt: str,
    turns: Sequence[Turn],
    max_model_len: int,
    max_tokens: int,
    context_start: int = 0,
    slack: int = 0,
) -> PromptPlan:
    """Keep the newest turns that fit `max_model_len - max_tokens` (the last turn, the one
    being answered, always); shrink `max_tokens` only when that turn alone leaves less room.
    Raises ContextLengthExceededError when not even MIN_REPLY_TOKENS fit."""
    assert turns and turns[-1].role == "user", "the last turn is the one being answered"
    starts = [i for i, t in enumerate(turns) if t.role == "user"]

    def count(i: int) -> int:
        return counter.count_chat(_messages(system_prompt, turns[i:]))

    def plan(i: int, num_tokens: int, reply: int) -> PromptPlan:
        return PromptPlan(_messages(system_prompt, turns[i:]), num_tokens, reply, turns[i].seq, i)

    budget = max_model_len - max_tokens
    # The stored cut point first: if it still fits, the prompt's prefix is unchanged.
    first = next((i for i in starts if turns[i].seq >= context_start), starts[-1])
    n = count(first)
    if n <= budget:
        return plan(first, n, max_tokens)
    candidates = [i for i in starts if i > first]
    for target in (budget - slack, budget):
        lo, hi = 0, len(candidates)  # find the first candidate whose count fits the target
        while lo < hi:
            mid = (lo + hi) // 2
            if count(candidates[mid]) <= target:
                hi = mid
            else:
                lo = mid + 1
        if lo < len(candidates):
            i = candidates[lo]
            return plan(i, count(i), max_tokens)
    last = starts[-1]
    n = count(last)
    if max_model_len - n >= MIN_REPLY_TOKENS:
        return plan(last, n, min(max_tokens, max_model_len - n))
    raise ContextLengthExceededError(
        f"This message is {n} tokens with the system prompt; the model's context is "
        f"{max_model_len} tokens and a reply needs at least {MIN_REPLY_TOKENS}.",
        param="content",
    )
