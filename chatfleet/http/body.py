"""Reading a JSON request body safely: size, UTF-8, nesting depth, lone surrogates, schema.

Every front answers a bad body the same way: 413 past the size limit, else a 400 that names
what is wrong (never a framework 422).
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import anyio
from fastapi import Request
from pydantic import BaseModel, ValidationError

from chatfleet.errors import InvalidRequestError
from chatfleet.http.http_errors import BodyTimeoutError, PayloadTooLargeError

ModelT = TypeVar("ModelT", bound=BaseModel)
DEFAULT_BODY_TIMEOUT_S = 60.0  # HttpLimitsConfig's default; fronts pass their own


def json_depth_ok(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if depth > limit:
            return False
        if isinstance(v, dict):
            stack.extend((x, depth + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, depth + 1) for x in v)
    return True


def has_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


async def read_body(
    request: Request, max_bytes: int, timeout_s: float = DEFAULT_BODY_TIMEOUT_S
) -> bytes:
    """The raw body; PayloadTooLargeError (413) past `max_bytes`, declared or sent;
    BodyTimeoutError (408) if it has not all arrived within `timeout_s`."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLargeError(f"request body over {max_bytes} bytes")
    body = bytearray()
    try:
        with anyio.fail_after(timeout_s):
            async for part in request.stream():
                body += part
                if len(body) > max_bytes:
                    raise PayloadTooLargeError(f"request body over {max_bytes} bytes")
    except TimeoutError:
        raise BodyTimeoutError(f"the request body did not arrive within {timeout_s:g} s") from None
    return bytes(body)


def parse_json(body: bytes, max_depth: int) -> Any:
    """The body as JSON, or InvalidRequestError (400) naming what is wrong."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequestError("the request body is not valid UTF-8") from None
    try:
        value = json.loads(text)
    except RecursionError:
        raise InvalidRequestError("JSON nested too deeply") from None
    except ValueError as e:
        raise InvalidRequestError(f"malformed JSON: {e}") from None
    if not json_depth_ok(value, max_depth):
        raise InvalidRequestError(f"JSON nested deeper than {max_depth}")
    if has_lone_surrogate(value):
        raise InvalidRequestError("the request contains invalid Unicode (lone surrogates)")
    return value


async def read_json(
    request: Request, max_bytes: int, max_depth: int, timeout_s: float = DEFAULT_BODY_TIMEOUT_S
) -> Any:
    return parse_json(await read_body(request, max_bytes, timeout_s), max_depth)


def parse_model(model: type[ModelT], body: Any) -> ModelT:
    """Validate a JSON body; the first problem becomes a 400 naming its field."""
    if not isinstance(body, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as e:
        err = e.errors()[0]
        param = ".".join(str(x) for x in err["loc"]) or None
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "this server does not implement this field (see docs/usage.md)"
        raise InvalidRequestError(f"{param}: {message}", param=param) from None
