"""SqlStore: the repository's queries over a SqlConnection; SQLite and PostgreSQL differ
only in their `Dialect` (sql_connection.py)."""

from __future__ import annotations

import secrets
import time
from typing import Any

from chatfleet.gateway import keys
from chatfleet.gateway.store import migrations, sql_quota
from chatfleet.gateway.store.base import (
    INTERRUPTED_ERROR,
    ApiKey,
    Conversation,
    GatewayStore,
    Message,
    ReplyEnd,
    Usage,
    UsageOwner,
    UsageRow,
    User,
)
from chatfleet.gateway.store.sql_connection import Dialect, SqlConnection
from chatfleet.gateway.store.sql_rows import (
    CONV_COLS,
    KEY_COLS,
    MSG_COLS,
    conversation_record,
    key_record,
    message_record,
    to_json,
    usage_values,
)
from chatfleet.http.http_errors import ConflictError


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


class SqlStore(GatewayStore):
    """GatewayStore over SQLite or PostgreSQL; migrates the schema on construction."""

    def __init__(self, dialect: Dialect) -> None:
        self.db = SqlConnection(dialect)
        with self.db.transaction(*dialect.migration_lock) as cur:
            self.applied_migrations = migrations.apply(cur, dialect.types)

    def close(self) -> None:
        self.db.close()

    # ---- users and keys -----------------------------------------------------------------
    def create_user(self, name: str, is_admin: bool = False) -> User:
        user = User(new_id("user"), name, is_admin, time.time())
        try:
            self.db.run(
                "INSERT INTO users (user_id, name, is_admin, created_at) VALUES (?, ?, ?, ?)",
                (user.user_id, name, int(is_admin), user.created_at),
            )
        except self.db.dialect.integrity_error:
            raise ConflictError(f"user {name!r} already exists", param="user") from None
        return user

    def get_user_by_name(self, name: str) -> User | None:
        row = self.db.one(
            "SELECT user_id, name, is_admin, created_at FROM users WHERE name = ?", (name,)
        )
        return None if row is None else User(row[0], row[1], bool(row[2]), row[3])

    def create_key(
        self,
        user_id: str,
        name: str = "",
        rpm: int | None = None,
        tpm: int | None = None,
        max_streams: int | None = None,
    ) -> tuple[ApiKey, str]:
        made = keys.new_key()
        now = time.time()
        self.db.run(
            "INSERT INTO api_keys (key_id, user_id, name, salt, secret_hash, rpm, tpm, "
            "max_streams, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (made.key_id, user_id, name, made.salt, made.secret_hash, rpm, tpm, max_streams, now),
        )
        record = self.get_key(made.key_id)
        assert record is not None
        return record, made.plain

    def get_key(self, key_id: str) -> ApiKey | None:
        row = self.db.one(
            f"SELECT {KEY_COLS} FROM api_keys k JOIN users u ON u.user_id = k.user_id "
            "WHERE k.key_id = ?",
            (key_id,),
        )
        return None if row is None else key_record(row)

    def list_keys(self, user_id: str | None = None) -> list[ApiKey]:
        sql = f"SELECT {KEY_COLS} FROM api_keys k JOIN users u ON u.user_id = k.user_id"
        if user_id is None:
            rows = self.db.all(sql + " ORDER BY k.created_at")
        else:
            rows = self.db.all(sql + " WHERE k.user_id = ? ORDER BY k.created_at", (user_id,))
        return [key_record(r) for r in rows]

    def revoke_key(self, key_id: str) -> bool:
        if self.get_key(key_id) is None:
            return False
        self.db.run(
            "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
            (time.time(), key_id),
        )
        return True

    # ---- conversations ------------------------------------------------------------------
    def create_conversation(
        self,
        user_id: str,
        title: str = "",
        system_prompt: str = "",
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        max_stored_bytes: int | None = None,
    ) -> Conversation:
        now = time.time()
        conv_id = new_id("conv")
        conv = Conversation(
            conv_id, user_id, title, system_prompt, 0, now, now, tools or [], tool_choice
        )
        with self.db.transaction() as cur:
            sql_quota.lock_user(self.db, cur, user_id, max_stored_bytes)
            cur.execute(
                self.db.q(
                    f"INSERT INTO conversations ({CONV_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                ),
                (conv_id, user_id, title, system_prompt, 0, now, now)
                + (to_json(tools), to_json(tool_choice)),
            )
            sql_quota.check_quota(self.db, cur, user_id, max_stored_bytes)
        return conv

    def get_conversation(self, conversation_id: str) -> Conversation | None:
        row = self.db.one(
            f"SELECT {CONV_COLS} FROM conversations WHERE conversation_id = ?", (conversation_id,)
        )
        return None if row is None else conversation_record(row)

    def list_conversations(
        self, user_id: str, limit: int, before: float | None = None
    ) -> list[Conversation]:
        sql = f"SELECT {CONV_COLS} FROM conversations WHERE user_id = ?"
        order = " ORDER BY updated_at DESC, conversation_id LIMIT ?"
        if before is None:
            rows = self.db.all(sql + order, (user_id, limit))
        else:
            rows = self.db.all(sql + " AND updated_at < ?" + order, (user_id, before, limit))
        return [conversation_record(r) for r in rows]

    def update_conversation(
        self,
        conversation_id: str,
        title: str | None = None,
        context_start: int | None = None,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        max_stored_bytes: int | None = None,
    ) -> Conversation | None:
        with self.db.transaction() as cur:
            # Only tools and tool_choice add stored text: a rename is never refused.
            quota = None if tools is None and tool_choice is None else max_stored_bytes
            user_id = self._owner(cur, conversation_id) if quota is not None else None
            if user_id is not None:
                sql_quota.lock_user(self.db, cur, user_id, quota)
            for column, value in (("tools", tools), ("tool_choice", tool_choice)):
                if value is not None:
                    cur.execute(
                        self.db.q(
                            f"UPDATE conversations SET {column} = ?, updated_at = ? "
                            "WHERE conversation_id = ?"
                        ),
                        (to_json(value), time.time(), conversation_id),
                    )
            if title is not None:
                cur.execute(
                    self.db.q(
                        "UPDATE conversations SET title = ?, updated_at = ? "
                        "WHERE conversation_id = ?"
                    ),
                    (title, time.time(), conversation_id),
                )
            if context_start is not None:
                cur.execute(
                    self.db.q(
                        "UPDATE conversations SET context_start = ? WHERE conversation_id = ?"
                    ),
                    (context_start, conversation_id),
                )
            if user_id is not None:
                sql_quota.check_quota(self.db, cur, user_id, quota)
        return self.get_conversation(conversation_id)

    def _owner(self, cur: Any, conversation_id: str) -> str | None:
        """The conversation's user; its row locked until commit where the dialect locks."""
        cur.execute(
            self.db.q(
                "SELECT user_id FROM conversations WHERE conversation_id = ?"
                + self.db.dialect.lock_rows
            ),
            (conversation_id,),
        )
        row = cur.fetchone()
        return None if row is None else str(row[0])

    def stored_bytes(self, user_id: str) -> int:
        with self.db.cursor() as cur:
            return sql_quota.stored_bytes(self.db, cur, user_id)

    def delete_conversation(self, conversation_id: str) -> bool:
        with self.db.transaction() as cur:
            cur.execute(
                self.db.q("DELETE FROM messages WHERE conversation_id = ?"), (conversation_id,)
            )
            cur.execute(
                self.db.q("DELETE FROM conversations WHERE conversation_id = ?"), (conversation_id,)
            )
            return cur.rowcount > 0

    # ---- messages -----------------------------------------------------------------------
    def list_messages(self, conversation_id: str) -> list[Message]:
        rows = self.db.all(
            f"SELECT {MSG_COLS} FROM messages WHERE conversation_id = ? ORDER BY seq",
            (conversation_id,),
        )
        return [message_record(r) for r in rows]

    def _insert_message(
        self, cur: Any, conversation_id: str, role: str, content: str, status: str, now: float
    ) -> Message:
        message_id = new_id("msg")
        cur.execute(
            self.db.q(
                "INSERT INTO messages (message_id, conversation_id, role, content, status, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING seq"
            ),
            (message_id, conversation_id, role, content, status, now, now),
        )
        seq = int(cur.fetchone()[0])
        return Message(
            message_id, conversation_id, seq, role, content, status, None, None, Usage(), now, now
        )

    def start_reply(
        self,
        conversation_id: str,
        user_content: str | None,
        title: str | None = None,
        stale_before: float = 0.0,
        max_stored_bytes: int | None = None,
    ) -> tuple[Message | None, Message]:
        now = time.time()
        quota = None if user_content is None else max_stored_bytes
        with self.db.transaction() as cur:
            # NOTE: the conversation's row is locked until commit, so of two replies started
            # at once the second sees the first's "streaming" message.
            user_id = self._owner(cur, conversation_id)
            if user_id is not None:
                sql_quota.lock_user(self.db, cur, user_id, quota)
            cur.execute(
                self.db.q(
                    "SELECT COUNT(*) FROM messages WHERE conversation_id = ? "
                    "AND status = 'streaming' AND updated_at >= ?"
                ),
                (conversation_id, stale_before),
            )
            if int(cur.fetchone()[0]):
                raise ConflictError("A reply is still being written in this conversation.")
            user = None
            if user_content is not None:
                user = self._insert_message(
                    cur, conversation_id, "user", user_content, "complete", now
                )
            reply = self._insert_message(cur, conversation_id, "assistant", "", "streaming", now)
            cur.execute(
                self.db.q("UPDATE conversations SET updated_at = ? WHERE conversation_id = ?"),
                (now, conversation_id),
            )
            if title:
                cur.execute(
                    self.db.q(
                        "UPDATE conversations SET title = ? "
                        "WHERE conversation_id = ? AND title = ''"
                    ),
                    (title, conversation_id),
                )
            if user_id is not None:
                sql_quota.check_quota(self.db, cur, user_id, quota)
        return user, reply

    def accept_reply(self, message_id: str, replace_message_id: str | None) -> None:
        if replace_message_id is not None:
            self.db.run("DELETE FROM messages WHERE message_id = ?", (replace_message_id,))

    def drop_reply(self, message_id: str, user_message_id: str | None) -> None:
        with self.db.transaction() as cur:
            for mid in (message_id, user_message_id):
                if mid is not None:
                    cur.execute(self.db.q("DELETE FROM messages WHERE message_id = ?"), (mid,))

    def update_reply(self, message_id: str, content: str) -> None:
        self.db.run(
            "UPDATE messages SET content = ?, updated_at = ? "
            "WHERE message_id = ? AND status = 'streaming'",
            (content, time.time(), message_id),
        )

    def finish_reply(
        self, message_id: str, end: ReplyEnd, owner: UsageOwner | None = None
    ) -> Message | None:
        now = time.time()
        with self.db.transaction() as cur:
            if owner is not None:
                self._add_usage(cur, owner, end.usage)
            cur.execute(
                self.db.q(
                    "UPDATE messages SET status = ?, content = ?, finish_reason = ?, error = ?, "
                    "prompt_tokens = ?, completion_tokens = ?, cached_tokens = ?, updated_at = ?, "
                    f"tool_calls = ? WHERE message_id = ? RETURNING {MSG_COLS}"
                ),
                (end.status, end.content, end.finish_reason, end.error, *usage_values(end.usage))
                + (now, to_json(end.tool_calls), message_id),
            )
            row = cur.fetchone()
            if row is None:
                return None
            cur.execute(
                self.db.q("UPDATE conversations SET updated_at = ? WHERE conversation_id = ?"),
                (now, row[1]),
            )
        return message_record(row)

    def expire_stale_replies(self, stale_before: float) -> int:
        return self.db.run(
            "UPDATE messages SET status = 'incomplete', error = ? "
            "WHERE status = 'streaming' AND updated_at < ?",
            (INTERRUPTED_ERROR, stale_before),
        )

    # ---- usage --------------------------------------------------------------------------
    def record_usage(self, owner: UsageOwner, usage: Usage) -> None:
        with self.db.transaction() as cur:
            self._add_usage(cur, owner, usage)

    def _add_usage(self, cur: Any, owner: UsageOwner, usage: Usage) -> None:
        cur.execute(
            self.db.q(
                "INSERT INTO usage_daily (day, key_id, user_id, num_requests, prompt_tokens, "
                "cached_tokens, completion_tokens) VALUES (?, ?, ?, 1, ?, ?, ?) "
                "ON CONFLICT (day, key_id) DO UPDATE SET "
                "num_requests = usage_daily.num_requests + 1, "
                "prompt_tokens = usage_daily.prompt_tokens + excluded.prompt_tokens, "
                "cached_tokens = usage_daily.cached_tokens + excluded.cached_tokens, "
                "completion_tokens = usage_daily.completion_tokens + excluded.completion_tokens"
            ),
            (
                owner.day,
                owner.key_id,
                owner.user_id,
                usage.prompt_tokens,
                usage.cached_tokens,
                usage.completion_tokens,
            ),
        )

    def list_usage(self, since_day: str, user_id: str | None = None) -> list[UsageRow]:
        sql = (
            "SELECT d.day, d.user_id, u.name, d.key_id, d.num_requests, d.prompt_tokens, "
            "d.cached_tokens, d.completion_tokens FROM usage_daily d "
            "JOIN users u ON u.user_id = d.user_id WHERE d.day >= ?"
        )
        order = " ORDER BY d.day, d.key_id"
        if user_id is None:
            rows = self.db.all(sql + order, (since_day,))
        else:
            rows = self.db.all(sql + " AND d.user_id = ?" + order, (since_day, user_id))
        return [UsageRow(*(r[:4]), *(int(x) for x in r[4:])) for r in rows]
