"""SQLite dialect: the embedded default. WAL lets readers run while a reply is written."""

from __future__ import annotations

import sqlite3
import time

from chatfleet.gateway.private_files import private_file
from chatfleet.gateway.store.sql_connection import Dialect


def sqlite_path(url: str) -> str:
    """`sqlite:///rel.db` -> `rel.db`, `sqlite:////abs.db` -> `/abs.db` (SQLAlchemy's rule)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ValueError(f"SQLite URL must look like sqlite:///PATH, got {url!r}")
    return url[len(prefix) :]


def _enable_wal(conn: sqlite3.Connection, timeout_s: float) -> None:
    """Switch to WAL, waiting out other connections that are switching it at the same time.

    NOTE: turning a fresh database to WAL takes an exclusive lock and SQLite does not run the
    busy handler for it, so a gateway opening the file while another one does gets "database
    is locked" at once (seen when several gateways start together on a new database).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def sqlite_dialect(url: str) -> Dialect:
    path = sqlite_path(url)

    def connect() -> sqlite3.Connection:
        # NOTE: created 0600 before SQLite opens it: its -wal and -shm files take the
        # database file's permissions.
        private_file(path)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        _enable_wal(conn, timeout_s=30)
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
