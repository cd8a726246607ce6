"""Where the gateway keeps users, keys, conversations and usage; picked by URL scheme.

sqlite:///relative/path.db, sqlite:////absolute/path.db   embedded default (WAL)
postgresql://user@host:port/dbname                       several gateway processes
"""

from __future__ import annotations

from collections.abc import Callable

from chatfleet.gateway.store.base import GatewayStore
from chatfleet.gateway.store.postgres import postgres_dialect
from chatfleet.gateway.store.sql import SqlStore
from chatfleet.gateway.store.sql_connection import Dialect
from chatfleet.gateway.store.sqlite import sqlite_dialect

STORES: dict[str, Callable[[str], Dialect]] = {
    "sqlite": sqlite_dialect,
    "postgresql": postgres_dialect,
    "postgres": postgres_dialect,
}


def open_store(url: str) -> GatewayStore:
    """Connect and migrate; ValueError for an unknown scheme or a malformed URL."""
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower()
    make = STORES.get(scheme)
    if make is None or "://" not in url:
        raise ValueError(f"unsupported database URL {url!r}: use sqlite:///PATH or postgresql://")
    return SqlStore(make(url))
