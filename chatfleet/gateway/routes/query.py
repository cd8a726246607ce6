"""Query-string parameters: typed, bounded, a 400 naming the parameter otherwise."""

from __future__ import annotations

import re

from fastapi import Request

from chatfleet.errors import InvalidRequestError

_DIGITS = re.compile(r"[0-9]{1,12}")


def int_query(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    # NOTE: ASCII digits only: str.isdigit() accepts "²", which int() then refuses.
    if not _DIGITS.fullmatch(raw) or not lo <= int(raw) <= hi:
        raise InvalidRequestError(f"{name} must be an integer in [{lo}, {hi}]", param=name)
    return int(raw)


def bool_query(request: Request, name: str) -> bool:
    return request.query_params.get(name, "").lower() in ("1", "true")
