"""Security tests: each one is an attack on the real stack on 127.0.0.1 that the edge must
hold against. The gateway and router helpers are the other packages' own."""

from __future__ import annotations

from tests.gateway.conftest import (  # noqa: F401 - fixtures, used by name
    db_url,
    gateway_factory,
    postgres,
    redis_server,
    sqlite_url,
)
