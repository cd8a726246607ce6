"""/v1/* for any OpenAI client: the caller's key and limits, then the upstream, streamed back.

Tokens reserved up front are prompt (counted here) + n * max_tokens (the upstream's default
when absent); the upstream's exact usage settles them. Streams always ask the upstream for
usage (`stream_options.include_usage`); a client that did not ask never sees that chunk.
The upstream's own refusals (400, 429, 503, ...) reach the client unchanged.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from chatfleet.config.gateway_config import GatewayConfig
from chatfleet.errors import InvalidRequestError
from chatfleet.gateway.backends import Backends
from chatfleet.gateway.chat import today
from chatfleet.gateway.limiter import Admission
from chatfleet.gateway.prompt import CharTokenCounter
from chatfleet.gateway.store.base import ApiKey, Usage
from chatfleet.gateway.upstream import parse_chat_chunk, parse_usage
from chatfleet.gateway.workers import run_db, run_tokenize
from chatfleet.http import sse
from chatfleet.http.body import read_json
from chatfleet.http.handlers import unless_disconnected
from chatfleet.http.http_errors import ReplicaFailedError
from chatfleet.sampling_params import COMPLETIONS_MAX_TOKENS, MAX_PROMPTS


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


class OpenAIProxy:
    def __init__(self, backends: Backends, config: GatewayConfig) -> None:
        self.store, self.upstream = backends.store, backends.upstream
        self.limiter, self.counter = backends.limiter, backends.counter
        self.config = config

    def _count_prompt(self, path: str, payload: dict[str, Any]) -> tuple[int, int]:
        """(prompt tokens, number of prompts); a guess from the characters if the prompt is
        malformed (the upstream then refuses it and the reservation is refunded)."""
        try:
            if path.endswith("/chat/completions"):
                messages = [
                    {"role": m["role"], "content": _text(m.get("content"))}
                    for m in payload["messages"]
                ]
                return self.counter.count_chat(messages), 1
            prompt = payload["prompt"]
            if isinstance(prompt, str):
                return self.counter.count_text(prompt), 1
            if all(isinstance(p, int) for p in prompt):
                return len(prompt), 1
            sizes = [len(p) if isinstance(p, list) else self.counter.count_text(p) for p in prompt]
            return sum(sizes), len(sizes)
        except Exception:
            return CharTokenCounter().count_text(json.dumps(payload)), 1

    async def _reservation(self, path: str, payload: dict[str, Any]) -> tuple[int, int]:
        """(tokens, engine requests) the request may use: prompt + n x max_tokens per prompt,
        and one request per prompt and choice. A prompt list over MAX_PROMPTS is a 400 here,
        before anything is counted."""
        prompt = payload.get("prompt")
        is_token_list = isinstance(prompt, list) and all(isinstance(p, int) for p in prompt)
        if isinstance(prompt, list) and len(prompt) > MAX_PROMPTS and not is_token_list:
            raise InvalidRequestError(
                f"at most {MAX_PROMPTS} prompts per request, got {len(prompt)}", param="prompt"
            )
        num_prompt, num_prompts = await run_tokenize(self._count_prompt, path, payload)
        max_tokens = payload.get("max_completion_tokens") or payload.get("max_tokens")
        if not isinstance(max_tokens, int) or max_tokens < 1:
            if path.endswith("/chat/completions"):
                limit = self.config.chat.max_model_len or await self.upstream.max_model_len()
                max_tokens = max(limit - num_prompt, 1)
            else:
                max_tokens = COMPLETIONS_MAX_TOKENS
        n = payload.get("n")
        n = n if isinstance(n, int) and n >= 1 else 1
        return num_prompt + n * num_prompts * max_tokens, n * num_prompts

    async def forward(self, key: ApiKey, request: Request) -> Response:
        """POST /v1/chat/completions or /v1/completions on behalf of `key`."""
        path = request.url.path
        c = self.config
        # NOTE: a key over its rate is refused before its body is read and tokenized.
        await self.limiter.check_open(key)
        payload = await read_json(request, c.max_body_bytes, c.max_json_depth)
        if not isinstance(payload, dict):
            raise InvalidRequestError("the request body must be a JSON object")
        is_stream = payload.get("stream") is True
        wants_usage = is_stream and bool((payload.get("stream_options") or {}).get("include_usage"))
        if is_stream:
            payload = {**payload, "stream_options": {"include_usage": True}}
        num_tokens, num_requests = await self._reservation(path, payload)
        admission = await self.limiter.admit(key, num_tokens, is_stream, num_requests)
        session = request.headers.get(self.upstream.config.session_header)
        headers = self.upstream.headers(session_id=session)
        body = json.dumps(payload).encode()
        try:
            if not is_stream:
                return await unless_disconnected(
                    request, self._complete(key, admission, path, body, headers)
                )
            response = await self.upstream.open("POST", path, body, headers)
        except BaseException:
            await admission.release()
            raise
        relay = self._relay(key, admission, response, path, payload, wants_usage)
        out_headers = {**admission.headers, "cache-control": "no-cache"}
        return StreamingResponse(relay, media_type="text/event-stream", headers=out_headers)

    async def _complete(
        self, key: ApiKey, admission: Admission, path: str, body: bytes, headers: dict[str, str]
    ) -> Response:
        try:
            response = await self.upstream.fetch("POST", path, body, headers)
        except BaseException:  # refused, failed, or cancelled because the client left
            with anyio.CancelScope(shield=True):
                await admission.release()
            raise
        try:
            usage = parse_usage(json.loads(response.content).get("usage"))
        except (ValueError, AttributeError):
            usage = None
        await self._account(key, admission, usage or Usage())
        media = response.headers.get("content-type", "application/json")
        return Response(response.content, response.status_code, admission.headers, media_type=media)

    async def _relay(
        self,
        key: ApiKey,
        admission: Admission,
        response: httpx.Response,
        path: str,
        payload: dict[str, Any],
        wants_usage: bool,
    ) -> AsyncIterator[str]:
        usage: Usage | None = None
        parts: list[str] = []
        is_accounted = False
        try:
            async for data in sse.aiter_data(response.aiter_lines()):
                if data is None:
                    yield sse.KEEP_ALIVE
                    continue
                if data == "[DONE]":
                    # Settle before the client sees the end, so its next request finds the
                    # stream slot and the refunded tokens back.
                    with anyio.CancelScope(shield=True):
                        await self._account_stream(key, admission, usage, path, payload, parts)
                    is_accounted = True
                else:
                    event = _event(data)
                    found = parse_usage(event.get("usage")) if event else None
                    usage = found or usage
                    if event is not None and path.endswith("/chat/completions"):
                        parts.append(parse_chat_chunk(data).text)
                    elif event is not None:
                        parts += [c.get("text") or "" for c in event.get("choices") or []]
                    if found is not None and not wants_usage:
                        if not event or not event.get("choices"):
                            continue  # the usage-only chunk the client did not ask for
                        data = json.dumps({k: v for k, v in event.items() if k != "usage"})
                yield sse.data_event(data)
        except httpx.HTTPError as e:
            failed = ReplicaFailedError(f"the upstream failed mid-stream ({type(e).__name__})")
            yield sse.error_event(failed)
            yield sse.DONE
        finally:
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(Exception):
                    await response.aclose()
                if not is_accounted:
                    await self._account_stream(key, admission, usage, path, payload, parts)

    async def _account_stream(
        self,
        key: ApiKey,
        admission: Admission,
        usage: Usage | None,
        path: str,
        payload: dict[str, Any],
        parts: list[str],
    ) -> None:
        """The upstream's usage, or (stopped, failed) a count of what was sent."""
        if usage is None:
            num_prompt, _ = await run_tokenize(self._count_prompt, path, payload)
            completion = await run_tokenize(self.counter.count_text, "".join(parts))
            usage = Usage(num_prompt, completion)
        await self._account(key, admission, usage)

    async def _account(self, key: ApiKey, admission: Admission, usage: Usage) -> None:
        try:
            await run_db(self.store.record_usage, today(), key.user_id, key.key_id, usage)
        finally:
            await admission.settle(usage.prompt_tokens + usage.completion_tokens)
            await admission.release()


def _event(data: str) -> dict[str, Any] | None:
    try:
        obj = json.loads(data)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None
