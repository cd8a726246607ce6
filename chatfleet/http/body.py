"""Reading a JSON request body safely: size, UTF-8, nesting depth, lone surrogates, schema.

Every front answers a bad body the same way: 413 past the size limit, else a 400 that names
what is wrong (never a framework 422).
"""

from __future__ import annotations

import functools
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
    """Validate a JSON body; the most specific problem becomes a 400 naming its field."""
    if not isinstance(body, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as e:
        names = _field_names(model)
        located = [(_param(err, names), err) for err in e.errors()]
        # NOTE: a value that fits no member of a union fails once per member; the error that
        # got deepest (a content part's "type", not "should be a string") says the most.
        param, err = max(located, key=lambda pe: len(pe[0].split(".")) if pe[0] else 0)
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "this server does not implement this field (see docs/usage.md)"
        raise InvalidRequestError(f"{param}: {message}", param=param) from None


@functools.cache
def _field_names(model: type[BaseModel]) -> frozenset[str]:
    """The property names of `model` and of every model nested in it."""
    schema = model.model_json_schema()
    parts = [schema, *schema.get("$defs", {}).values()]
    return frozenset(name for part in parts for name in part.get("properties", {}))


def _param(err: Any, names: frozenset[str]) -> str | None:
    """The error's location as a request param: field names and list indexes.

    NOTE: pydantic also puts in it the union member it tried ("temperature.int") and the
    keys of free-form maps; neither is a param. An unknown field keeps its own name."""
    loc = err["loc"]
    last = len(loc) - 1
    kept = [
        str(x)
        for k, x in enumerate(loc)
        if isinstance(x, int) or x in names or (k == last and err["type"] == "extra_forbidden")
    ]
    return ".".join(kept) or None
