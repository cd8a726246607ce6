"""Typed errors shared by every layer.

User mistakes raise `InvalidRequestError` (or a subclass) naming the offending field; the
HTTP layer maps each class to one OpenAI error shape and status code, so nothing here knows
about HTTP.
"""

from __future__ import annotations


class ChatfleetError(Exception):
    """Base class: `type` and `code` follow the OpenAI error object."""

    type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequestError(ChatfleetError, ValueError):
    """A request field has a value the engine cannot serve (HTTP 400)."""

    type = "invalid_request_error"


class ContextLengthExceededError(InvalidRequestError):
    """The prompt (plus the requested output) does not fit the model's context."""

    code = "context_length_exceeded"


class EngineDeadError(ChatfleetError):
    """The engine loop died; every in-flight and future request fails with this."""

    type = "server_error"
    code = "engine_dead"


class GrammarDeadEndError(ChatfleetError):
    """A constrained choice reached a state its grammar cannot leave (HTTP 500, or an error
    event in a stream); the other requests in the batch go on."""

    type = "server_error"
    code = "grammar_dead_end"


class UnsupportedModelError(ChatfleetError, ValueError):
    """A model file chatfleet cannot serve exactly (an architecture, a tensor, a setting)."""
