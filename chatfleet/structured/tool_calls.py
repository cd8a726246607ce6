"""The text format of tool calls, both ways: tools and past calls into the prompt, the
model's text back into OpenAI `tool_calls` (whole, or as stream deltas).

A call is written as the model sees it in its prompt and as the grammar makes it write it:

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

Several calls are separated by one newline. Qwen2.5's chat template uses this format; for a
template without tool support, `tools_system_prompt` describes it in the system message.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "}\n</tool_call>"
_HEAD = re.compile(r'\n\{"name": "([^"]*)", "arguments": ')


def call_head(name: str) -> str:
    """The text of a call up to its arguments."""
    return f'{CALL_OPEN}\n{{"name": "{name}", "arguments": '


@dataclass(frozen=True)
class FunctionTool:
    name: str
    description: str
    parameters: dict[str, Any]  # a JSON schema for the arguments object
    strict: bool = False

    def as_openai(self) -> dict[str, Any]:
        function = {"name": self.name, "description": self.description}
        return {"type": "function", "function": {**function, "parameters": self.parameters}}


@dataclass(frozen=True)
class ToolCall:
    call_id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it

    def as_openai(self) -> dict[str, Any]:
        function = {"name": self.name, "arguments": self.arguments}
        return {"id": self.call_id, "type": "function", "function": function}


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


def render_call(name: str, arguments: str) -> str:
    return call_head(name) + arguments + CALL_CLOSE


def tools_system_prompt(tools: list[FunctionTool]) -> str:
    """What a model whose template knows no tools is told about them (a system message)."""
    listed = "\n".join(json.dumps(t.as_openai()) for t in tools)
    return (
        "You can call functions to help answer. The available functions, one JSON object per "
        f"line:\n<tools>\n{listed}\n</tools>\n"
        "To call a function, reply with its name and a JSON object of arguments, exactly as:\n"
        f'{CALL_OPEN}\n{{"name": "function_name", "arguments": {{"arg": "value"}}}}\n'
        "</tool_call>\nOne such block per call; answer in plain text when no function helps."
    )


def parse_calls(text: str) -> tuple[str | None, list[ToolCall]]:
    """(the text outside the calls, stripped, or None if empty; the calls): what a stream of
    the same text delivers. Text without a call is returned as it is.

    NOTE: a call cut short (the token limit) is still a call, its arguments cut short, as a
    stream has already sent it and as OpenAI returns it (with finish_reason "length"); the
    whole calls before it are kept."""
    delta = ToolCallStream().feed(text, is_last=True)
    calls = [
        ToolCall(c["id"], c["function"]["name"], c["function"]["arguments"])
        for c in delta.get("tool_calls", [])
    ]
    if not calls:
        return text, []
    return delta.get("content", "").strip() or None, calls


@dataclass
class ToolCallStream:
    """Turns a choice's text deltas into `delta` fields: content outside calls, and for each
    call first its id and name, then pieces of its arguments, as the `openai` SDK reassembles.

    Text that may be the start of a tag is held until it is known not to be one.
    """

    pending: str = ""
    num_calls: int = 0
    in_call: bool = False
    named: bool = False  # the current call's id and name were sent
    arguments: str = ""  # the current call's arguments sent so far

    def feed(self, text: str, is_last: bool = False) -> dict[str, Any]:
        """The delta for `text`; with `is_last`, what was held back goes out as it stands,
        but for the start of a cut call's closing markup."""
        self.pending += text
        content: list[str] = []
        calls: list[dict[str, Any]] = []
        while self._step(content, calls):
            pass
        if is_last:
            rest, self.pending = self.pending, ""
            if self.in_call and self.named:
                if not self._is_cut_in_closing_tag(rest):
                    calls.append({"index": self.num_calls, "function": {"arguments": rest}})
            else:
                content.append(CALL_OPEN + rest if self.in_call else rest)
        return _delta("".join(content), calls)

    def _step(self, content: list[str], calls: list[dict[str, Any]]) -> bool:
        """Move what `pending` settles into `content` and `calls`; True to go on."""
        if not self.in_call:
            if self.num_calls:  # after a call only newlines part calls (the grammar's rule)
                self.pending = self.pending.lstrip("\n")
            start = self.pending.find(CALL_OPEN)
            if start < 0:
                keep = len(self.pending) - _partial_suffix(self.pending, CALL_OPEN)
                content.append(self.pending[:keep])
                self.pending = self.pending[keep:]
                return False
            content.append(self.pending[:start])
            self.pending = self.pending[start + len(CALL_OPEN) :]
            self.in_call, self.named = True, False
            return True
        if not self.named:
            head = _HEAD.match(self.pending)
            if head is None:
                return False
            call_id = new_call_id()
            function = {"name": head.group(1), "arguments": ""}
            calls.append(
                {"index": self.num_calls, "id": call_id, "type": "function", "function": function}
            )
            self.pending, self.named, self.arguments = self.pending[head.end() :], True, ""
        end = self.pending.find(CALL_CLOSE)
        cut = end if end >= 0 else len(self.pending) - _partial_suffix(self.pending, CALL_CLOSE)
        if cut > 0:
            self.arguments += self.pending[:cut]
            calls.append({"index": self.num_calls, "function": {"arguments": self.pending[:cut]}})
        if end < 0:
            self.pending = self.pending[cut:]
            return False
        self.pending = self.pending[end + len(CALL_CLOSE) :].removeprefix("\n")
        self.num_calls += 1
        self.in_call = False
        return True

    def _is_cut_in_closing_tag(self, rest: str) -> bool:
        """Whether the held-back end of a cut call is the start of its closing markup, not
        arguments: it could be either only while the arguments sent are not yet whole JSON
        (a held "}" closes the arguments object or the call)."""
        if not rest or not CALL_CLOSE.startswith(rest):
            return False
        try:
            json.loads(self.arguments)
        except ValueError:
            return False
        return True

    @property
    def has_calls(self) -> bool:
        return self.num_calls > 0 or (self.in_call and self.named)


def _partial_suffix(text: str, tag: str) -> int:
    """The length of the longest end of `text` that is a proper start of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


def _delta(content: str, calls: list[dict[str, Any]]) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    if content:
        delta["content"] = content
    merged: list[dict[str, Any]] = []
    for call in calls:  # one entry per call index in a chunk
        if merged and merged[-1]["index"] == call["index"]:
            merged[-1]["function"]["arguments"] += call["function"]["arguments"]
        else:
            merged.append({**call, "function": dict(call["function"])})
    if merged:
        delta["tool_calls"] = merged
    return delta
