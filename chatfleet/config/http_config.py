"""What every HTTP front allows its clients: how many connections, and how long a request may
take to arrive. A client that sends its headers or body too slowly is cut off, so a few
hundred half-sent requests cannot hold a front's sockets and memory for ever."""

from __future__ import annotations

from dataclasses import dataclass, field

from chatfleet.config.flags import setting


@dataclass(frozen=True)
class HttpLimitsConfig:
    max_connections: int = field(
        default=4096, metadata=setting(help="open connections; more are answered 503")
    )
    header_timeout_s: float = field(
        default=10.0, metadata=setting(help="a request's headers must arrive within this")
    )
    body_timeout_s: float = field(
        default=60.0, metadata=setting(help="a request's body must arrive within this")
    )
    keep_alive_s: float = field(
        default=5.0, metadata=setting(help="an idle connection between requests is closed after")
    )

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError("max_connections must be positive")
        if min(self.header_timeout_s, self.body_timeout_s, self.keep_alive_s) <= 0:
            raise ValueError("HTTP timeouts must be positive")
