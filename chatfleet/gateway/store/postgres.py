"""PostgreSQL dialect (psycopg 3): one database shared by several gateway processes."""

from __future__ import annotations

from typing import Any

from chatfleet.extras import require
from chatfleet.gateway.store.sql_connection import Dialect

# pg_advisory_xact_lock key: serializes migrations of gateways starting at the same time.
_MIGRATION_LOCK_ID = 0x63686174  # "chat"


def postgres_dialect(url: str) -> Dialect:
    psycopg = require("psycopg", "postgres", "a PostgreSQL gateway store")

    from psycopg.types.string import StrDumperUnknown

    class NulFreeStrDumper(StrDumperUnknown):
        """Strings as psycopg sends them, NUL written as U+FFFD.

        NOTE: PostgreSQL text cannot hold NUL (psycopg raises DataError); SQLite's can. A
        message, title or id with one would be a 500, and a reply the model ended with one
        would lose its end and its usage; this way it is stored (or not found) instead."""

        def dump(self, obj: str) -> Any:
            return super().dump(obj.replace("\x00", "\ufffd"))

    def connect() -> Any:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
        conn.adapters.register_dumper(str, NulFreeStrDumper)
        return conn

    return Dialect(
        name="postgresql",
        connect=connect,
        types={"serial": "BIGSERIAL PRIMARY KEY", "real": "DOUBLE PRECISION", "bigint": "BIGINT"},
        placeholder="%s",
        begin_write="BEGIN",
        migration_lock=(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_ID})",),
        integrity_error=psycopg.IntegrityError,
        lock_rows=" FOR UPDATE",
        byte_length="OCTET_LENGTH({})",
    )
