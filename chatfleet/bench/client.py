"""Streaming chat-completions client that times every content chunk.

Works against any OpenAI-compatible server (chatfleet, vLLM, llama.cpp, SGLang): it sends
`stream=true` with `stream_options.include_usage` and reads the SSE lines itself, so the time
of each chunk is taken when its line arrives, not after an SDK has parsed it. Failures (a
non-200 status, an SSE `error` event, a dropped connection) become fields of the record.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from chatfleet.bench.record import RequestRecord, round_s
from chatfleet.bench.workload import BenchRequest

MAX_ERROR_MESSAGE_CHARS = 300


@dataclass(frozen=True)
class ClientConfig:
    base_url: str  # "http://host:port", with or without a trailing /v1
    model: str | None = None  # None: the field is left out (single-model servers accept that)
    api_key: str | None = None
    temperature: float = 0.0
    ignore_eos: bool = False  # vLLM and chatfleet know it; llama.cpp does not
    timeout_s: float = 600.0

    @property
    def api_url(self) -> str:
        base = self.base_url.rstrip("/")
        return base if base.endswith("/v1") else base + "/v1"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


@dataclass(frozen=True)
class Exchange:
    """A request, its record, and the answer text (kept in memory only: history, counting)."""

    request: BenchRequest
    record: RequestRecord
    output_text: str


@dataclass
class StreamState:
    """What the SSE lines of one response said so far."""

    start: float  # perf_counter() when the request was sent
    chunk_times_s: list[float] = field(default_factory=list)
    text_parts: list[str] = field(default_factory=list)
    usage: dict[str, Any] | None = None
    error_type: str | None = None
    error_message: str | None = None
    is_done: bool = False

    def feed(self, line: str, now: float) -> None:
        """Consume one SSE line received at perf_counter() `now`."""
        if not line.startswith("data:"):
            return  # blank separators, comments, `event:` lines
        payload = line[len("data:") :].strip()
        if payload == "[DONE]":
            self.is_done = True
            return
        try:
            obj = json.loads(payload)
        except json.JSONDecodeError:
            self.error_type, self.error_message = "invalid_sse", payload[:MAX_ERROR_MESSAGE_CHARS]
            return
        if not isinstance(obj, dict):
            return
        if obj.get("error") is not None:
            self.error_type, self.error_message = error_fields(obj)
            return
        if isinstance(obj.get("usage"), dict):
            self.usage = obj["usage"]
        text = "".join(_delta_text(choice) for choice in obj.get("choices") or [])
        if text:
            self.chunk_times_s.append(round_s(now - self.start))
            self.text_parts.append(text)


def _delta_text(choice: Any) -> str:
    delta = choice.get("delta") if isinstance(choice, dict) else None
    if not isinstance(delta, dict):
        return ""
    # NOTE: reasoning models stream their thinking first; it is output the user waits through.
    return (delta.get("content") or "") + (delta.get("reasoning_content") or "")


def error_fields(body: Any) -> tuple[str, str | None]:
    """(type, message) from an OpenAI error body; the code is the most specific type."""
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        kind = err.get("code") or err.get("type") or "error"
        message = err.get("message")
        return str(kind), None if message is None else str(message)[:MAX_ERROR_MESSAGE_CHARS]
    if isinstance(err, str):
        return "error", err[:MAX_ERROR_MESSAGE_CHARS]
    return "error", None


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class ChatClient:
    """Sends `BenchRequest`s over one shared `httpx.AsyncClient`."""

    def __init__(self, config: ClientConfig, http: httpx.AsyncClient) -> None:
        self.config, self.http = config, http

    def body(self, request: BenchRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "messages": request.messages,
            "max_tokens": request.max_tokens,
            "temperature": self.config.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.config.model is not None:
            body["model"] = self.config.model
        if self.config.ignore_eos:
            body["ignore_eos"] = True
        if request.response_format is not None:
            body["response_format"] = request.response_format
        return body

    async def send(self, request: BenchRequest, run_start: float) -> Exchange:
        """Send one request and time it; never raises for HTTP or connection failures.

        `run_start` is the perf_counter() value the run's timeline starts at.
        """
        url = f"{self.config.api_url}/chat/completions"
        state = StreamState(time.perf_counter())
        status: int | None = None
        try:
            async with self.http.stream(
                "POST", url, json=self.body(request), headers=self.config.headers
            ) as response:
                status = response.status_code
                if status != 200:
                    raw = await response.aread()
                    state.error_type, state.error_message = _http_error(status, raw)
                else:
                    async for line in response.aiter_lines():
                        state.feed(line, time.perf_counter())
                        if state.is_done:
                            break
        except httpx.HTTPError as e:
            state.error_type = type(e).__name__
            state.error_message = str(e)[:MAX_ERROR_MESSAGE_CHARS] or None
        end = time.perf_counter()
        return Exchange(request, _record(request, state, status, run_start, end), _text(state))


def _http_error(status: int, raw: bytes) -> tuple[str, str | None]:
    try:
        kind, message = error_fields(json.loads(raw))
    except ValueError:
        return f"http_{status}", raw.decode("utf-8", "replace")[:MAX_ERROR_MESSAGE_CHARS]
    return (f"http_{status}" if kind == "error" else kind), message


def _text(state: StreamState) -> str:
    return "".join(state.text_parts)


def _record(
    request: BenchRequest, state: StreamState, status: int | None, run_start: float, end: float
) -> RequestRecord:
    usage = state.usage or {}
    prompt_tokens = _int_or_none(usage.get("prompt_tokens"))
    completion_tokens = _int_or_none(usage.get("completion_tokens"))
    has_usage = prompt_tokens is not None and completion_tokens is not None
    return RequestRecord(
        session_index=request.session_index,
        turn_index=request.turn_index,
        start_s=round_s(state.start - run_start),
        e2e_s=round_s(end - state.start),
        chunk_times_s=tuple(state.chunk_times_s),
        max_tokens=request.max_tokens,
        status_code=status,
        error_type=state.error_type,
        error_message=state.error_message,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        token_count_source="usage" if has_usage else None,
    )


async def resolve_model(http: httpx.AsyncClient, config: ClientConfig) -> str | None:
    """The configured model, else the first one /v1/models lists, else None.

    Doubles as the reachability check: a connection failure raises httpx.HTTPError.
    """
    response = await http.get(f"{config.api_url}/models", headers=config.headers)
    if config.model is not None:
        return config.model
    try:
        return str(response.json()["data"][0]["id"])
    except (ValueError, KeyError, IndexError, TypeError):
        return None
