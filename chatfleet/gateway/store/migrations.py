"""Schema migrations, shared by SQLite and PostgreSQL.

Each migration is (version, name, statements); `{serial}`, `{real}` and `{bigint}` are filled
in per dialect. `apply()` runs the missing ones in order inside one transaction that holds the
dialect's lock, so several gateways starting against one database migrate it exactly once.
Never edit a released migration: append a new one.
"""

from __future__ import annotations

import time
from typing import Any

MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (
        1,
        "users, keys, conversations, messages, daily usage",
        [
            """CREATE TABLE users (
                user_id TEXT PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                is_admin INTEGER NOT NULL DEFAULT 0,
                created_at {real} NOT NULL)""",
            """CREATE TABLE api_keys (
                key_id TEXT PRIMARY KEY,
                user_id TEXT NOT NULL REFERENCES users(user_id),
                name TEXT NOT NULL DEFAULT '',
                salt TEXT NOT NULL,
                secret_hash TEXT NOT NULL,
                rpm INTEGER,
                tpm INTEGER,
                max_streams INTEGER,
                created_at {real} NOT NULL,
                revoked_at {real})""",
            "CREATE INDEX api_keys_by_user ON api_keys(user_id)",
            """CREATE TABLE conversations (
                conversation_id TEXT PRIMARY KEY,
                user_id TEXT NOT NULL REFERENCES users(user_id),
                title TEXT NOT NULL DEFAULT '',
                system_prompt TEXT NOT NULL DEFAULT '',
                context_start {bigint} NOT NULL DEFAULT 0,
                created_at {real} NOT NULL,
                updated_at {real} NOT NULL)""",
            "CREATE INDEX conversations_by_user ON conversations(user_id, updated_at)",
            """CREATE TABLE messages (
                seq {serial},
                message_id TEXT NOT NULL UNIQUE,
                conversation_id TEXT NOT NULL
                    REFERENCES conversations(conversation_id) ON DELETE CASCADE,
                role TEXT NOT NULL,
                content TEXT NOT NULL,
                status TEXT NOT NULL,
                finish_reason TEXT,
                error TEXT,
                prompt_tokens INTEGER NOT NULL DEFAULT 0,
                completion_tokens INTEGER NOT NULL DEFAULT 0,
                cached_tokens INTEGER NOT NULL DEFAULT 0,
                created_at {real} NOT NULL,
                updated_at {real} NOT NULL)""",
            "CREATE INDEX messages_by_conversation ON messages(conversation_id, seq)",
            """CREATE INDEX messages_streaming ON messages(updated_at)
                WHERE status = 'streaming'""",
            """CREATE TABLE usage_daily (
                day TEXT NOT NULL,
                key_id TEXT NOT NULL,
                user_id TEXT NOT NULL,
                num_requests {bigint} NOT NULL DEFAULT 0,
                prompt_tokens {bigint} NOT NULL DEFAULT 0,
                cached_tokens {bigint} NOT NULL DEFAULT 0,
                completion_tokens {bigint} NOT NULL DEFAULT 0,
                PRIMARY KEY (day, key_id))""",
            "CREATE INDEX usage_by_user ON usage_daily(user_id, day)",
        ],
    ),
    (
        2,
        "conversation tools and tool choice, reply tool calls (JSON text; empty: none)",
        [
            "ALTER TABLE conversations ADD COLUMN tools TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE conversations ADD COLUMN tool_choice TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE messages ADD COLUMN tool_calls TEXT NOT NULL DEFAULT ''",
        ],
    ),
]

LATEST_VERSION = MIGRATIONS[-1][0]


class SchemaTooNewError(RuntimeError):
    """The database was migrated by a newer gateway; this one must not write to it."""


def apply(cursor: Any, types: dict[str, str]) -> list[int]:
    """Run the missing migrations with `cursor`, already inside a locked transaction.

    Returns the versions applied (empty when up to date); raises SchemaTooNewError.
    """
    cursor.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        f"version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at {types['real']} NOT NULL)"
    )
    cursor.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
    current = int(cursor.fetchone()[0])
    if current > LATEST_VERSION:
        raise SchemaTooNewError(
            f"database schema version {current} is newer than this gateway's {LATEST_VERSION}"
        )
    applied = []
    for version, name, statements in MIGRATIONS:
        if version <= current:
            continue
        for sql in statements:
            cursor.execute(sql.format(**types))
        cursor.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES "
            f"({version}, '{name}', {time.time()})"
        )
        applied.append(version)
    return applied
