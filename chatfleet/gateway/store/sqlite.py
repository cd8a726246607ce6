"""SQLite dialect: the embedded default. WAL lets readers run while a reply is written."""

from __future__ import annotations

import os
import sqlite3

from chatfleet.gateway.store.sql import Dialect


def sqlite_path(url: str) -> str:
    """`sqlite:///rel.db` -> `rel.db`, `sqlite:////abs.db` -> `/abs.db` (SQLAlchemy's rule)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ValueError(f"SQLite URL must look like sqlite:///PATH, got {url!r}")
    return url[len(prefix) :]


def sqlite_dialect(url: str) -> Dialect:
    path = sqlite_path(url)

    def connect() -> sqlite3.Connection:
        if os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        # NOTE: NORMAL under WAL loses nothing when the process is killed (a commit is in the
        # WAL file before COMMIT returns); only a power cut may drop the last transactions.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    return Dialect(
        name="sqlite",
        connect=connect,
        types={"serial": "INTEGER PRIMARY KEY AUTOINCREMENT", "real": "REAL", "bigint": "INTEGER"},
        placeholder="?",
        # IMMEDIATE takes the write lock up front, so two processes never deadlock upgrading.
        begin_write="BEGIN IMMEDIATE",
        migration_lock=(),
        integrity_error=sqlite3.IntegrityError,
    )
