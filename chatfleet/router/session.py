"""The session key of a request, for the `session` policy: one function for every front."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def session_key(payload: Any, headers: Mapping[str, str], header: str) -> str | None:
    """The `header` value (e.g. x-session-id; `headers` keyed in lower case), else the body's
    OpenAI `user` field, else None (the request is then routed by load)."""
    session = headers.get(header)
    if session is None and isinstance(payload, dict) and isinstance(payload.get("user"), str):
        session = payload["user"]
    return session
