"""Request bodies of the /api/* routes (strict types; values checked here, once), and the
JSON the routes return for stored records."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, model_validator

from chatfleet.gateway.store.base import (
    INTERRUPTED_ERROR,
    MAX_KEY_LIMIT,
    ApiKey,
    Conversation,
    Message,
    UsageRow,
)

Number = StrictInt | float
MAX_TITLE_CHARS = 200


class _Base(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


FunctionName = Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class FunctionSpec(_Base):
    name: FunctionName
    description: Annotated[StrictStr, Field(max_length=4_000)] = ""
    parameters: dict[str, Any] | None = None  # a JSON schema; the upstream compiles it
    strict: StrictBool | None = None


class ToolSpec(_Base):
    """A tool the model may call in a conversation (the OpenAI `tools` item). The gateway
    runs no tools: a call is shown and stored, its result is the caller's to give."""

    type: Literal["function"]
    function: FunctionSpec


Tools = Annotated[list[ToolSpec], Field(max_length=32)]


class NamedToolChoice(_Base):
    class Function(_Base):
        name: FunctionName

    type: Literal["function"]
    function: Function


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class _ToolSettings(_Base):
    """How a conversation's replies may call tools (kept with the conversation)."""

    tools: Tools | None = None
    tool_choice: ToolChoice | None = None  # None: the upstream's default ("auto" with tools)

    def tools_json(self) -> list[dict[str, Any]] | None:
        tools = self.tools
        return None if tools is None else [t.model_dump(exclude_none=True) for t in tools]

    def tool_choice_json(self) -> str | dict[str, Any] | None:
        choice = self.tool_choice
        return choice.model_dump() if isinstance(choice, NamedToolChoice) else choice


class NewConversation(_ToolSettings):
    title: Annotated[StrictStr, Field(max_length=MAX_TITLE_CHARS)] = ""
    system_prompt: Annotated[StrictStr, Field(max_length=20_000)] = ""


class UpdateConversation(_ToolSettings):
    title: Annotated[StrictStr, Field(min_length=1, max_length=MAX_TITLE_CHARS)] | None = None

    @model_validator(mode="after")
    def _some_field(self) -> UpdateConversation:
        if self.title is None and self.tools is None and self.tool_choice is None:
            raise ValueError("give title, tools or tool_choice")
        return self


class ReplyOptions(_Base):
    """Sampling knobs a conversation reply accepts (the gateway caps max_tokens)."""

    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    temperature: Annotated[Number, Field(ge=0, le=2)] | None = None
    top_p: Annotated[Number, Field(gt=0, le=1)] | None = None
    seed: StrictInt | None = None


class NewMessage(ReplyOptions):
    content: Annotated[StrictStr, Field(min_length=1)]


KeyLimit = Annotated[StrictInt, Field(ge=1, le=MAX_KEY_LIMIT)]


class NewKey(_Base):
    user: Annotated[StrictStr, Field(min_length=1, max_length=100)]
    name: Annotated[StrictStr, Field(max_length=100)] = ""
    rpm: KeyLimit | None = None
    tpm: KeyLimit | None = None
    max_streams: KeyLimit | None = None


def effective_status(m: Message, stale_after_s: float, now: float | None = None) -> str:
    """A "streaming" reply nobody has touched for `stale_after_s` lost its gateway."""
    now = time.time() if now is None else now
    if m.status == "streaming" and now - m.updated_at > stale_after_s:
        return "incomplete"
    return m.status


def message_json(m: Message, stale_after_s: float) -> dict[str, Any]:
    u = m.usage
    status = effective_status(m, stale_after_s)
    error = INTERRUPTED_ERROR if status != m.status else m.error
    return {
        "id": m.message_id,
        "object": "conversation.message",
        "conversation_id": m.conversation_id,
        "role": m.role,
        "content": m.content,
        "status": status,
        "finish_reason": m.finish_reason,
        "error": error,
        "created_at": m.created_at,
        "tool_calls": m.tool_calls or None,
        "usage": {
            "prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.completion_tokens,
            "total_tokens": u.prompt_tokens + u.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
        },
    }


def conversation_json(c: Conversation) -> dict[str, Any]:
    return {
        "id": c.conversation_id,
        "object": "conversation",
        "title": c.title,
        "system_prompt": c.system_prompt,
        "tools": c.tools,
        "tool_choice": c.tool_choice,
        "created_at": c.created_at,
        "updated_at": c.updated_at,
    }


def key_json(k: ApiKey) -> dict[str, Any]:
    return {
        "id": k.key_id,
        "object": "api_key",
        "user": k.user_name,
        "is_admin": k.is_admin,
        "name": k.name,
        "rpm": k.rpm,
        "tpm": k.tpm,
        "max_streams": k.max_streams,
        "created_at": k.created_at,
        "revoked_at": k.revoked_at,
    }


def usage_json(rows: list[UsageRow]) -> dict[str, Any]:
    fields = ("num_requests", "prompt_tokens", "cached_tokens", "completion_tokens")
    data = [
        {"day": r.day, "user": r.user_name, "key_id": r.key_id} | {f: getattr(r, f) for f in fields}
        for r in rows
    ]
    total = {f: sum(getattr(r, f) for r in rows) for f in fields}
    return {"object": "list", "data": data, "total": total}
