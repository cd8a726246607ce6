"""The gateway's typed errors; server/errors.py's `to_error_response` maps them to JSON.

Every error a client sees has OpenAI's shape: {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

from chatfleet.server.errors import AuthenticationError, HTTPError, NotFoundError

__all__ = [
    "AuthenticationError",
    "ConflictError",
    "ForbiddenError",
    "NotFoundError",
    "RateLimitError",
    "UpstreamError",
]


class ForbiddenError(HTTPError):
    """The key is valid but may not do this (admin-only routes)."""

    status_code, type, code = 403, "invalid_request_error", "permission_denied"


class ConflictError(HTTPError):
    """The resource is in a state that forbids the change (e.g. a reply is streaming)."""

    status_code, type, code = 409, "invalid_request_error", "conflict"


class RateLimitError(HTTPError):
    """A per-key limit refused the request: 429 with Retry-After and x-ratelimit-* headers.

    `type` says which limit, as OpenAI does: "requests", "tokens" or "streams".
    """

    status_code, code = 429, "rate_limit_exceeded"

    def __init__(self, message: str, kind: str, headers: dict[str, str]) -> None:
        super().__init__(message)
        self.type = kind
        self.headers = headers


class UpstreamError(HTTPError):
    """The upstream could not be reached or failed; 502 (or the upstream's own 5xx)."""

    status_code, type = 502, "server_error"
    code: str | None = "upstream_error"

    def __init__(
        self, message: str, status_code: int = 502, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.headers = headers or {}
