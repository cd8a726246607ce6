"""A streamed chat or text completion, read chunk by chunk as it passes through the gateway:
each choice's text so far (what the engine generated, to bill when a stream stops early), the
usage chunk, an error event, and the non-streamed body the chunks add up to.

The gateway asks its upstream for a stream even when its client wants one JSON body: a client
that leaves then stops the engine at once and is billed for what was generated, neither more
(the whole reply) nor nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ToolCallParts:
    """A choice's tool calls assembled from their deltas: each call's id and name come once,
    its arguments in pieces."""

    calls: dict[int, dict[str, Any]] = field(default_factory=dict)  # by call index

    def add(self, delta: Any) -> None:
        index = delta.get("index") if isinstance(delta, dict) else None
        if not isinstance(index, int):
            return
        call = self.calls.setdefault(
            index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
        )
        call["id"] = delta.get("id") or call["id"]
        function = delta.get("function")
        if not isinstance(function, dict):
            function = {}
        call["function"]["name"] += _text(function.get("name"))
        call["function"]["arguments"] += _text(function.get("arguments"))

    def as_list(self) -> list[dict[str, Any]]:
        return [self.calls[k] for k in sorted(self.calls)]

    @property
    def text(self) -> str:
        """The calls' generated text (names and arguments), for billing."""
        return "".join(c["function"]["name"] + c["function"]["arguments"] for c in self.as_list())


@dataclass
class _Choice:
    text: str = ""
    finish_reason: str | None = None
    logprobs: list[Any] | None = None  # chat: content items; completions: per-token rows
    has_role: bool = False
    tool_calls: ToolCallParts = field(default_factory=ToolCallParts)

    @property
    def generated(self) -> str:
        """Everything generated so far, tool calls included (what a stopped stream bills)."""
        return self.text + self.tool_calls.text


@dataclass
class StreamAssembler:
    is_chat: bool
    head: dict[str, Any] = field(default_factory=dict)  # id, created, model
    choices: dict[int, _Choice] = field(default_factory=dict)
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None

    def feed(self, event: dict[str, Any]) -> None:
        """One `data:` payload (parsed JSON) of the stream."""
        if "error" in event:
            err = event["error"]
            self.error = err if isinstance(err, dict) else {"message": str(err)}
            return
        for name in ("id", "created", "model"):
            if name in event and name not in self.head:
                self.head[name] = event[name]
        if isinstance(event.get("usage"), dict):
            self.usage = event["usage"]
        for raw in event.get("choices") or []:
            if isinstance(raw, dict) and isinstance(raw.get("index"), int):
                self._feed_choice(self.choices.setdefault(raw["index"], _Choice()), raw)

    def _feed_choice(self, choice: _Choice, raw: dict[str, Any]) -> None:
        logprobs: Any
        if self.is_chat:
            delta = raw.get("delta")
            piece = _text(delta.get("content") if isinstance(delta, dict) else None)
            for call in (delta.get("tool_calls") if isinstance(delta, dict) else None) or []:
                choice.tool_calls.add(call)
            lp = raw.get("logprobs")
            logprobs = lp.get("content") if isinstance(lp, dict) else None
        else:
            piece = _text(raw.get("text"))
            logprobs = _completion_rows(raw.get("logprobs"))
        if isinstance(logprobs, list):
            choice.logprobs = (choice.logprobs or []) + logprobs
        choice.text += piece
        choice.finish_reason = raw.get("finish_reason") or choice.finish_reason

    def texts(self) -> list[str]:
        """Every choice's generated text so far (tool calls included), by index."""
        return [self.choices[i].generated for i in sorted(self.choices)]

    def body(self) -> dict[str, Any]:
        """The chat.completion / text_completion object the stream amounted to."""
        choices = [self._choice_body(i, c) for i, c in sorted(self.choices.items())]
        obj = "chat.completion" if self.is_chat else "text_completion"
        return {**self.head, "object": obj, "choices": choices, "usage": self.usage}

    def _choice_body(self, index: int, c: _Choice) -> dict[str, Any]:
        if self.is_chat:
            logprobs = None if c.logprobs is None else {"content": c.logprobs}
            message: dict[str, Any] = {"role": "assistant", "content": c.text}
            if c.tool_calls.calls:
                message["tool_calls"] = c.tool_calls.as_list()
                message["content"] = c.text or None
            return {
                "index": index,
                "message": message,
                "logprobs": logprobs,
                "finish_reason": c.finish_reason,
            }
        logprobs = None
        if c.logprobs is not None:
            names = ("tokens", "token_logprobs", "top_logprobs", "text_offset")
            logprobs = {name: [row[k] for row in c.logprobs] for k, name in enumerate(names)}
        return {
            "index": index,
            "text": c.text,
            "logprobs": logprobs,
            "finish_reason": c.finish_reason,
        }


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _completion_rows(logprobs: Any) -> list[tuple[Any, Any, Any, Any]] | None:
    """A completion chunk's logprobs as one row per token (its text offsets already count
    from the start of the choice's text)."""
    if not isinstance(logprobs, dict):
        return None
    tokens = logprobs.get("tokens") or []
    names = ("token_logprobs", "top_logprobs", "text_offset")
    columns = [logprobs.get(k) or [None] * len(tokens) for k in names]
    return list(zip(tokens, *columns, strict=False))
