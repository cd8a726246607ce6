"""/v1/* for any OpenAI client: the caller's key and limits, then the upstream, streamed back.

Tokens reserved up front are prompt (counted here) + n * max_tokens (the upstream's default
when absent) per prompt; each prompt and choice is a request of the key's rate. The upstream
is always asked for a stream with usage: a client that wanted one body gets the chunks
assembled (stream_assembly.py), a streaming client that did not ask for usage never sees
that chunk, and a client that leaves stops the engine and is billed for what it generated,
every choice counted. The upstream's own refusals (400, 429, 503, ...) reach the client
unchanged.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
from fastapi import Request
from fastapi.responses import JSONResponse, Response

from chatfleet.config.gateway_config import GatewayConfig
from chatfleet.errors import InvalidRequestError
from chatfleet.gateway.backends import Backends
from chatfleet.gateway.chat import today
from chatfleet.gateway.limiter import Admission
from chatfleet.gateway.prompt import CharTokenCounter
from chatfleet.gateway.store.base import ApiKey, Usage, UsageOwner
from chatfleet.gateway.stream_assembly import StreamAssembler
from chatfleet.gateway.upstream import UpstreamError, parse_usage
from chatfleet.gateway.workers import run_db, run_tokenize
from chatfleet.http import sse
from chatfleet.http.body import read_json
from chatfleet.http.handlers import unless_disconnected
from chatfleet.http.http_errors import ReplicaFailedError
from chatfleet.http.streaming import ClosingStreamingResponse
from chatfleet.sampling_params import COMPLETIONS_MAX_TOKENS, MAX_PROMPTS


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _counted_message(m: dict[str, Any]) -> dict[str, Any]:
    """What of a chat message the upstream writes into the prompt: its text and, for an
    assistant, its past tool calls (their arguments can be most of a prompt)."""
    out = {"role": m["role"], "content": _text(m.get("content"))}
    if isinstance(m.get("tool_calls"), list):
        out["tool_calls"] = m["tool_calls"]
    return out


class OpenAIProxy:
    def __init__(self, backends: Backends, config: GatewayConfig) -> None:
        self.store, self.upstream = backends.store, backends.upstream
        self.limiter, self.counter = backends.limiter, backends.counter
        self.backends, self.config = backends, config

    def _count_prompt(self, path: str, payload: dict[str, Any]) -> tuple[int, int]:
        """(prompt tokens, number of prompts); a guess from the characters if the prompt is
        malformed (the upstream then refuses it and the reservation is refunded)."""
        try:
            if path.endswith("/chat/completions"):
                messages = [_counted_message(m) for m in payload["messages"]]
                # Tools are written into the prompt (the template or a system message).
                tools = self.counter.count_tools(payload.get("tools"), payload.get("tool_choice"))
                return self.counter.count_chat(messages) + tools, 1
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
        payload = await read_json(
            request, c.max_body_bytes, c.max_json_depth, c.http.body_timeout_s
        )
        if not isinstance(payload, dict):
            raise InvalidRequestError("the request body must be a JSON object")
        is_stream, wants_usage = _stream_flags(payload)
        # NOTE: always a stream upstream, with usage: a client that leaves stops the engine
        # and pays for what it generated; a client that wanted one body gets it assembled.
        # NOTE: a client never picks another tenant's cache salt, nor sends the fleet's own
        # fields (chatfleet_*: the router's stream resumption): a replica behind the gateway
        # would continue a reply from tokens the client made up, ahead of the queue.
        upstream_payload = {
            k: v for k, v in payload.items() if k != "cache_salt" and not k.startswith("chatfleet_")
        }
        upstream_payload |= {"stream": True, "stream_options": {"include_usage": True}}
        if (salt := self.backends.cache_salt(key.user_id)) is not None:
            upstream_payload["cache_salt"] = salt
        num_tokens, num_requests = await self._reservation(path, payload)
        # NOTE: a stream slot whether or not the client wants a stream: upstream it is one,
        # holding the engine as long, so max_streams bounds all of a key's /v1 requests.
        admission = await self.limiter.admit(key, num_tokens, True, num_requests)
        exchange = _Exchange(self, key, admission, path, payload)
        session = request.headers.get(self.upstream.config.session_header)
        headers = self.upstream.headers(session_id=session)
        body = json.dumps(upstream_payload).encode()
        try:
            if not is_stream:
                return await unless_disconnected(request, self._complete(exchange, body, headers))
            response = await self.upstream.open("POST", path, body, headers)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await exchange.account()
            raise
        relay = self._relay(exchange, response, wants_usage)
        out_headers = {**admission.headers, "cache-control": "no-cache"}

        async def account_if_unread() -> None:
            await response.aclose()
            await exchange.account()

        return ClosingStreamingResponse(relay, headers=out_headers, on_close=[account_if_unread])

    async def _complete(
        self, exchange: _Exchange, body: bytes, headers: dict[str, str]
    ) -> Response:
        """The upstream's stream read whole into the one body the client asked for."""
        response = await self.upstream.open("POST", exchange.path, body, headers)
        try:
            async for data in sse.aiter_data(response.aiter_lines()):
                if data == "[DONE]":
                    break
                if data is not None and (event := _event(data)) is not None:
                    exchange.assembler.feed(event)
        except httpx.HTTPError as e:
            raise UpstreamError(f"the upstream failed mid-response ({type(e).__name__})") from e
        finally:
            with anyio.CancelScope(shield=True):
                await response.aclose()
                await exchange.account()  # cancelled (the client left): what was generated
        error = exchange.assembler.error
        if error is not None:
            code = error.get("code")
            failed = UpstreamError(
                str(error.get("message")), 504 if code == "request_timeout" else 502
            )
            failed.code = code if isinstance(code, str) else failed.code
            raise failed
        return JSONResponse(exchange.assembler.body(), headers=exchange.admission.headers)

    async def _relay(
        self, exchange: _Exchange, response: httpx.Response, wants_usage: bool
    ) -> AsyncIterator[str]:
        try:
            async for data in sse.aiter_data(response.aiter_lines()):
                if data is None:
                    yield sse.KEEP_ALIVE
                    continue
                if data == "[DONE]":
                    # Settle before the client sees the end, so its next request finds the
                    # stream slot and the refunded tokens back.
                    with anyio.CancelScope(shield=True):
                        await exchange.account()
                else:
                    event = _event(data)
                    if event is not None:
                        exchange.assembler.feed(event)
                    if event is not None and "usage" in event and not wants_usage:
                        if not event.get("choices"):
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
                await exchange.account()


class _Exchange:
    """One /v1 request on its way through: what it reserved, what came back, and its
    accounting, done once however the request ends."""

    def __init__(
        self,
        proxy: OpenAIProxy,
        key: ApiKey,
        admission: Admission,
        path: str,
        payload: dict[str, Any],
    ) -> None:
        self.proxy, self.key, self.admission = proxy, key, admission
        self.path, self.payload = path, payload
        self.assembler = StreamAssembler(is_chat=path.endswith("/chat/completions"))
        self.is_accounted = False

    async def account(self) -> None:
        """Record the usage and settle the limits: the upstream's exact usage, or (stopped,
        failed) the prompt plus every choice's text so far, re-tokenized."""
        if self.is_accounted:
            return
        self.is_accounted = True
        usage = parse_usage(self.assembler.usage)
        if usage is None and (texts := self.assembler.texts()):
            num_prompt, _ = await run_tokenize(self.proxy._count_prompt, self.path, self.payload)
            completion = sum([await run_tokenize(self.proxy.counter.count_text, t) for t in texts])
            usage = Usage(num_prompt, completion)
        usage = usage or Usage()  # refused upstream: nothing was generated
        try:
            if usage != Usage():
                owner = UsageOwner(today(), self.key.user_id, self.key.key_id)
                await run_db(self.proxy.store.record_usage, owner, usage)
        finally:
            await self.admission.settle(usage.prompt_tokens + usage.completion_tokens)
            await self.admission.release()


def _stream_flags(payload: dict[str, Any]) -> tuple[bool, bool]:
    """(whether the client wants a stream, whether it wants the usage chunk).

    NOTE: the upstream always gets stream and stream_options of the gateway's own, so it
    never sees the client's: a bad value is refused here, as the upstream would."""
    stream = payload.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequestError("stream: Input should be a valid boolean", param="stream")
    options = payload.get("stream_options")
    if options is None:
        return stream, False
    if not stream:
        raise InvalidRequestError(
            "stream_options is only allowed with stream=true", param="stream_options"
        )
    include_usage = options.get("include_usage", False) if isinstance(options, dict) else None
    if not isinstance(include_usage, bool) or set(options) - {"include_usage"}:
        raise InvalidRequestError(
            'stream_options: only {"include_usage": true or false} is implemented',
            param="stream_options",
        )
    return True, include_usage


def _event(data: str) -> dict[str, Any] | None:
    try:
        obj = json.loads(data)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None
