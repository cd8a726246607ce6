"""A user's storage quota in the SQL stores: measured inside the write's own transaction, after
the write, so that parallel writes of one user cannot each pass it on the other's absence."""

from __future__ import annotations

from typing import Any

from chatfleet.gateway.store.base import StorageQuotaError
from chatfleet.gateway.store.sql_connection import SqlConnection


def stored_bytes(db: SqlConnection, cur: Any, user_id: str) -> int:
    """Bytes of the user's system prompts, tools, messages and their tool calls."""
    size = db.dialect.byte_length
    cur.execute(
        db.q(
            f"SELECT COALESCE(SUM({size.format('system_prompt')} + {size.format('tools')}), 0) "
            "FROM conversations WHERE user_id = ?"
        ),
        (user_id,),
    )
    prompts = int(cur.fetchone()[0])
    cur.execute(
        db.q(
            "SELECT COALESCE(SUM("
            f"{size.format('m.content')} + {size.format('m.tool_calls')}), 0) "
            "FROM messages m JOIN conversations c ON c.conversation_id = m.conversation_id "
            "WHERE c.user_id = ?"
        ),
        (user_id,),
    )
    return prompts + int(cur.fetchone()[0])


def lock_user(db: SqlConnection, cur: Any, user_id: str, max_stored_bytes: int | None) -> None:
    """Before a write that `check_quota` will measure: lock the user's row until commit.
    NOTE: writes of one user then measure one at a time, so two cannot each pass the
    quota on the other's absence; other users' writes do not wait (SQLite's write
    transaction already excludes every other writer)."""
    if max_stored_bytes is not None:
        lock = db.dialect.lock_rows
        cur.execute(db.q("SELECT user_id FROM users WHERE user_id = ?" + lock), (user_id,))


def check_quota(db: SqlConnection, cur: Any, user_id: str, max_stored_bytes: int | None) -> None:
    """After the transaction's writes: StorageQuotaError (rolling them back) if the user's
    conversations now hold more than `max_stored_bytes`."""
    if max_stored_bytes is None:
        return
    used = stored_bytes(db, cur, user_id)
    if used > max_stored_bytes:
        raise StorageQuotaError(
            f"this user's conversations would hold {used} bytes of {max_stored_bytes}; "
            "delete some first"
        )
