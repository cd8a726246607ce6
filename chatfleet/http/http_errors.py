"""Typed HTTP errors and the one mapping from any exception to OpenAI's error JSON.

Every error a client sees has OpenAI's shape: {"error": {"message", "type", "param", "code"}},
with the status code and headers (Retry-After) of the error's class.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse

from chatfleet.errors import ChatfleetError, InvalidRequestError


class HTTPError(ChatfleetError):
    """Errors that only exist at the HTTP layer."""

    status_code = 500
    headers: dict[str, str] = {}


class AuthenticationError(HTTPError):
    status_code, type, code = 401, "invalid_request_error", "invalid_api_key"


class ForbiddenError(HTTPError):
    """The key is valid but may not do this (admin-only routes)."""

    status_code, type, code = 403, "invalid_request_error", "permission_denied"


class NotFoundError(HTTPError):
    status_code, type, code = 404, "invalid_request_error", "not_found"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"


class ConflictError(HTTPError):
    """The resource is in a state that forbids the change (e.g. a reply is streaming)."""

    status_code, type, code = 409, "invalid_request_error", "conflict"


class BodyTimeoutError(HTTPError):
    """The client did not send its whole body in time (a slow or stalled upload)."""

    status_code, type, code = 408, "invalid_request_error", "body_timeout"
    headers = {"connection": "close"}


class PayloadTooLargeError(HTTPError):
    status_code, type, code = 413, "invalid_request_error", "request_too_large"


class OverloadedError(HTTPError):
    """Too many requests in flight: retry later (the openai SDK honours Retry-After)."""

    status_code, type, code = 503, "server_error", "overloaded"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after_s)}


class DrainingError(OverloadedError):
    code = "shutting_down"


class NoReplicaError(OverloadedError):
    """No eligible replica (all down, draining or already tried): 503 with Retry-After."""

    code = "no_replica_available"


class ReplicaFailedError(HTTPError):
    """A replica failed after its response began; sent as an SSE error event."""

    status_code, type, code = 502, "server_error", "replica_failed"


class ReplicaHungError(HTTPError):
    """A replica sent no token within the router's deadline; sent as an SSE error event."""

    status_code, type, code = 504, "server_error", "replica_timeout"


class RequestTimeoutError(HTTPError):
    status_code, type, code = 504, "server_error", "request_timeout"


def check_bearer(authorization: str, key: str | None) -> None:
    """AuthenticationError (401) unless `authorization` is `Bearer <key>` (no key: open).

    NOTE: compared in constant time, so the time of a refusal says nothing of the key."""
    if key is None:
        return
    if not hmac.compare_digest(authorization.encode(), f"Bearer {key}".encode()):
        raise AuthenticationError("Incorrect or missing API key.")


@dataclass(frozen=True)
class ErrorResponse:
    status_code: int
    body: dict[str, Any]
    headers: dict[str, str]


def to_error_response(exc: BaseException) -> ErrorResponse:
    """Status code, OpenAI error body and headers for any exception (unknown ones are 500,
    with the exception's class name only: never a message that could leak internals)."""
    if isinstance(exc, HTTPError):
        status, headers = exc.status_code, dict(exc.headers)
    elif isinstance(exc, InvalidRequestError):
        status, headers = 400, {}
    elif isinstance(exc, ChatfleetError):  # ours: the message is meant for the client
        status, headers = 500, {}
    else:
        status, headers = 500, {}
        exc = ChatfleetError(f"internal error: {type(exc).__name__}")
    assert isinstance(exc, ChatfleetError)
    body = {
        "error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}
    }
    return ErrorResponse(status, body, headers)


def error_json(exc: BaseException) -> JSONResponse:
    """The OpenAI-shaped JSON response for any exception (status, Retry-After included)."""
    err = to_error_response(exc)
    return JSONResponse(err.body, status_code=err.status_code, headers=err.headers)


ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
