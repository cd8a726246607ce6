"""One DB-API connection used under a lock, with the SQL dialect's differences (how to
connect, column types, placeholders, the migration lock) in one `Dialect`.

One connection per store: the gateway's writes are a handful per reply, and a single
connection keeps SQLite's one-writer rule and PostgreSQL's transactions simple. SQL is written
with `?` placeholders and rewritten once per statement for the dialect.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Dialect:
    name: str
    connect: Callable[[], Any]  # a new DB-API connection in autocommit mode
    types: dict[str, str]  # {serial}, {real}, {bigint} in migrations
    placeholder: str  # "?" or "%s"
    begin_write: str  # starts a transaction that will write
    migration_lock: tuple[str, ...]  # run right after begin_write before migrating
    integrity_error: type[Exception]  # raised on a UNIQUE violation
    # Appended to a SELECT in a write transaction to lock the rows it reads until commit
    # (" FOR UPDATE"); empty where a write transaction already excludes every other writer.
    lock_rows: str = ""
    byte_length: str = "LENGTH(CAST({} AS BLOB))"  # a text column's size in bytes


class SqlConnection:
    """Statements and transactions on one lazily (re)opened connection."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self._lock = threading.RLock()
        self._conn: Any = None
        self._sql: dict[str, str] = {}

    def q(self, sql: str) -> str:
        out = self._sql.get(sql)
        if out is None:
            out = self._sql[sql] = sql.replace("?", self.dialect.placeholder)
        return out

    def _connection(self) -> Any:
        if self._conn is None:
            self._conn = self.dialect.connect()
        return self._conn

    @contextlib.contextmanager
    def cursor(self) -> Iterator[Any]:
        """A cursor outside any transaction (each statement commits on its own)."""
        with self._lock:
            try:
                yield self._connection().cursor()
            except Exception:
                self._drop_broken_connection()
                raise

    @contextlib.contextmanager
    def transaction(self, *after_begin: str) -> Iterator[Any]:
        """A write transaction: committed on exit, rolled back on any exception."""
        with self._lock:
            cur = self._connection().cursor()
            cur.execute(self.dialect.begin_write)
            try:
                for sql in after_begin:
                    cur.execute(sql)
                yield cur
            except BaseException:
                with contextlib.suppress(Exception):
                    cur.execute("ROLLBACK")
                self._drop_broken_connection()
                raise
            cur.execute("COMMIT")

    def _drop_broken_connection(self) -> None:
        # NOTE: a connection that lost its server stays unusable; the next call reconnects.
        conn = self._conn
        if conn is not None and getattr(conn, "closed", False):
            self._conn = None

    def one(self, sql: str, params: tuple = ()) -> Any:
        with self.cursor() as cur:
            cur.execute(self.q(sql), params)
            return cur.fetchone()

    def all(self, sql: str, params: tuple = ()) -> list[Any]:
        with self.cursor() as cur:
            cur.execute(self.q(sql), params)
            return cur.fetchall()

    def run(self, sql: str, params: tuple = ()) -> int:
        with self.cursor() as cur:
            cur.execute(self.q(sql), params)
            return cur.rowcount

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
