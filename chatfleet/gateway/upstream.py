"""The client to the upstream OpenAI-compatible endpoint (a router or a single replica).

One shared httpx client. `open()` sends a request and waits for the status line: a refusal
(4xx/5xx) becomes an UpstreamError carrying the upstream's own status, type, code and
Retry-After, so callers relay it as is.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from chatfleet.config.gateway_config import UpstreamConfig
from chatfleet.gateway.store.base import Usage
from chatfleet.http.http_client import make_async_client
from chatfleet.http.http_errors import HTTPError

logger = logging.getLogger("chatfleet.gateway")
DEFAULT_MAX_MODEL_LEN = 2048  # when the upstream does not report one


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


def upstream_error(status: int, content: bytes, headers: Mapping[str, str]) -> UpstreamError:
    """The upstream's refusal as a typed error with its status, type, code and Retry-After."""
    try:
        error = json.loads(content).get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    if not isinstance(error, dict):
        error = {}
    message = error.get("message") or f"the upstream answered {status}"
    keep = {k: v for k, v in headers.items() if k.lower() == "retry-after"}
    err = UpstreamError(str(message), status, keep)
    err.type = str(
        error.get("type") or ("server_error" if status >= 500 else "invalid_request_error")
    )
    if "code" in error:  # the upstream's own code, null included (else upstream_error)
        err.code = None if error["code"] is None else str(error["code"])
    err.param = error.get("param") if isinstance(error.get("param"), str) else None
    return err


@dataclass(frozen=True)
class ChatChunk:
    """One parsed `chat.completion.chunk` (or the stream's error event)."""

    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    error: str | None = None
    tool_calls: tuple[Any, ...] = ()  # the tool-call deltas, as sent


def parse_usage(usage: Any) -> Usage | None:
    if not isinstance(usage, dict):
        return None
    details = usage.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens", 0) if isinstance(details, dict) else 0
    return Usage(
        int(usage.get("prompt_tokens") or 0),
        int(usage.get("completion_tokens") or 0),
        int(cached or 0),
    )


def parse_chat_chunk(data: str) -> ChatChunk:
    """A `data:` payload of a streamed chat completion; malformed ones are errors."""
    try:
        obj = json.loads(data)
    except ValueError:
        return ChatChunk(error="the upstream sent a malformed event")
    if not isinstance(obj, dict):
        return ChatChunk(error="the upstream sent a malformed event")
    if "error" in obj:
        err = obj["error"]
        message = err.get("message") if isinstance(err, dict) else None
        return ChatChunk(error=str(message or err))
    text, finish, calls = "", None, []
    for choice in obj.get("choices") or []:
        if isinstance(choice, dict) and choice.get("index", 0) == 0:
            delta = choice.get("delta")
            if isinstance(delta, dict):
                if isinstance(delta.get("content"), str):
                    text += delta["content"]
                if isinstance(delta.get("tool_calls"), list):
                    calls += delta["tool_calls"]
            finish = choice.get("finish_reason") or finish
    return ChatChunk(text, finish, parse_usage(obj.get("usage")), tool_calls=tuple(calls))


class Upstream:
    """`start()` before use, `close()` after."""

    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self.base_url = config.url.rstrip("/")
        self._client: httpx.AsyncClient | None = None
        self._max_model_len: int | None = None

    async def start(self) -> None:
        c = self.config
        self._client = make_async_client(
            c.connect_timeout_s,
            c.read_timeout_s,
            max_connections=1024,
            max_keepalive_connections=64,
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    @property
    def client(self) -> httpx.AsyncClient:
        assert self._client is not None, "Upstream.start() first"
        return self._client

    def headers(self, session_id: str | None = None) -> dict[str, str]:
        out = {"content-type": "application/json"}
        if self.config.api_key:
            out["authorization"] = f"Bearer {self.config.api_key}"
        if session_id:
            out[self.config.session_header] = session_id
        return out

    async def open(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> httpx.Response:
        """The upstream's response, streaming, once its status is in; raises UpstreamError
        for a refusal (the body read and closed) or a connection failure (502)."""
        try:
            request = self.client.build_request(
                method, self.base_url + path, content=body, headers=headers
            )
            response = await self.client.send(request, stream=True)
        except httpx.HTTPError as e:
            raise UpstreamError(f"the upstream is unreachable: {type(e).__name__}") from e
        if response.status_code >= 400:
            try:
                content = await response.aread()
            except httpx.HTTPError:
                content = b""
            finally:
                await response.aclose()
            raise upstream_error(response.status_code, content, response.headers)
        return response

    async def fetch(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> httpx.Response:
        """Like `open`, with the whole body read (`.content`) and the response closed."""
        response = await self.open(method, path, body, headers)
        try:
            await response.aread()
        except httpx.HTTPError as e:
            raise UpstreamError(f"the upstream failed mid-response: {type(e).__name__}") from e
        finally:
            await response.aclose()
        return response

    async def max_model_len(self) -> int:
        """The upstream model's context length from /v1/models (cached once known)."""
        if self._max_model_len is not None:
            return self._max_model_len
        response = await self.fetch("GET", "/v1/models", None, self.headers())
        try:
            data = json.loads(response.content).get("data") or []
        except (ValueError, AttributeError):
            data = []
        wanted = [m for m in data if not self.config.model or m.get("id") == self.config.model]
        value = next((m.get("max_model_len") for m in wanted if m.get("max_model_len")), None)
        if value is None:
            logger.warning("upstream reports no max_model_len; assuming %d", DEFAULT_MAX_MODEL_LEN)
            value = DEFAULT_MAX_MODEL_LEN
        self._max_model_len = int(value)
        return self._max_model_len
