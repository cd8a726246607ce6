"""One mapping from typed errors to OpenAI error JSON and HTTP status codes."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi.responses import JSONResponse

from chatfleet.errors import ChatfleetError, EngineDeadError, InvalidRequestError


class HTTPError(ChatfleetError):
    """Errors that only exist at the HTTP layer."""

    status_code = 500
    headers: dict[str, str] = {}


class AuthenticationError(HTTPError):
    status_code, type, code = 401, "invalid_request_error", "invalid_api_key"


class ModelNotFoundError(HTTPError):
    status_code, type, code = 404, "invalid_request_error", "model_not_found"


class NotFoundError(HTTPError):
    status_code, type, code = 404, "invalid_request_error", "not_found"


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


class RequestTimeoutError(HTTPError):
    status_code, type, code = 504, "server_error", "request_timeout"


@dataclass(frozen=True)
class ErrorResponse:
    status_code: int
    body: dict
    headers: dict[str, str]


def to_error_response(exc: BaseException) -> ErrorResponse:
    """Status code, OpenAI error body and headers for any exception (unknown ones are 500)."""
    if isinstance(exc, HTTPError):
        status, headers = exc.status_code, dict(exc.headers)
    elif isinstance(exc, InvalidRequestError):
        status, headers = 400, {}
    elif isinstance(exc, EngineDeadError):
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
