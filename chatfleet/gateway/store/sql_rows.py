"""Rows of the gateway's tables <-> the repository's records: the column lists the queries
select, and the functions that turn a selected row into a record (and JSON columns back)."""

from __future__ import annotations

import json
from typing import Any

from chatfleet.gateway.store.base import ApiKey, Conversation, Message, Usage

KEY_COLS = (
    "k.key_id, k.user_id, u.name, u.is_admin, k.name, k.salt, k.secret_hash, k.rpm, k.tpm, "
    "k.max_streams, k.created_at, k.revoked_at"
)
CONV_COLS = (
    "conversation_id, user_id, title, system_prompt, context_start, created_at, updated_at, "
    "tools, tool_choice"
)
MSG_COLS = (
    "message_id, conversation_id, seq, role, content, status, finish_reason, error, "
    "prompt_tokens, completion_tokens, cached_tokens, created_at, updated_at, tool_calls"
)


def to_json(value: Any) -> str:
    """A JSON column; None or empty is stored as ''."""
    return json.dumps(value, separators=(",", ":")) if value else ""


def from_json(text: str | None) -> Any:
    return json.loads(text) if text else None


def key_record(row: Any) -> ApiKey:
    k_id, user_id, user_name, is_admin, name, salt, secret_hash, rpm, tpm, streams = row[:10]
    return ApiKey(
        k_id,
        user_id,
        user_name,
        bool(is_admin),
        name,
        salt,
        secret_hash,
        rpm,
        tpm,
        streams,
        created_at=row[10],
        revoked_at=row[11],
    )


def conversation_record(row: Any) -> Conversation:
    tools, tool_choice = from_json(row[7]) or [], from_json(row[8])
    return Conversation(
        row[0], row[1], row[2], row[3], int(row[4]), row[5], row[6], tools, tool_choice
    )


def message_record(row: Any) -> Message:
    message_id, conversation_id, seq, role, content, status, finish_reason, error = row[:8]
    usage = Usage(int(row[8]), int(row[9]), int(row[10]))
    return Message(
        message_id,
        conversation_id,
        int(seq),
        role,
        content,
        status,
        finish_reason,
        error,
        usage,
        created_at=row[11],
        updated_at=row[12],
        tool_calls=from_json(row[13]) or [],
    )


def usage_values(u: Usage) -> tuple[int, int, int]:
    return u.prompt_tokens, u.completion_tokens, u.cached_tokens
