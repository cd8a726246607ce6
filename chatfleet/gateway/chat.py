"""One assistant reply in a conversation: streamed to the client, recorded as it goes.

    POST .../messages --> store the user message + an empty "streaming" reply (one
        transaction, taken alone per conversation: a second reply meanwhile is a 409)
        --> plan the prompt (trimmed history) --> admit (limits) --> upstream
        refused (400, 429, 502, 503): both messages dropped, the conversation as it was
        accepted --> SSE to the client: start, delta... (text or tool-call pieces), end, [DONE]
            (every flush_interval_s the partial text is written: the reply's heartbeat,
            beating from the moment the reply is stored, queue wait included)
        --> the reply ends "complete", "failed" (upstream error), or "stopped" (the client
            left, before the first byte or after: the upstream request is closed, so the
            engine aborts it)

The user's message is stored before the upstream is asked, so a gateway killed during a long
queue loses nothing: its reply is left "streaming" with a stale heartbeat, readers report it
"incomplete" and the sweeper stores that. Usage is the upstream's exact count; a stopped
reply has none, so it is counted here (prompt as planned, the partial text re-tokenized),
and it is stored in the same transaction as the reply's end.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx

from chatfleet.config.gateway_config import ChatConfig
from chatfleet.errors import InvalidRequestError
from chatfleet.gateway.backends import Backends
from chatfleet.gateway.limiter import Admission
from chatfleet.gateway.prompt import PromptPlan, Turn, plan_prompt
from chatfleet.gateway.schemas import ReplyOptions, message_json
from chatfleet.gateway.store.base import (
    ApiKey,
    Conversation,
    GatewayStore,
    Message,
    ReplyEnd,
    Usage,
    UsageOwner,
)
from chatfleet.gateway.stream_assembly import ToolCallParts
from chatfleet.gateway.upstream import parse_chat_chunk
from chatfleet.gateway.workers import run_db, run_tokenize
from chatfleet.http import sse
from chatfleet.http.streaming import ClosingStreamingResponse

logger = logging.getLogger("chatfleet.gateway")
_NEW_SEQ = 1 << 62  # the message being sent has no seq until it is stored


def today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


class _Heartbeat:
    """Writes a reply's partial text every `interval_s`: its liveness for readers and the
    sweeper."""

    def __init__(self, store: GatewayStore, message_id: str, interval_s: float):
        self.store, self.message_id = store, message_id
        self.interval_s = interval_s
        self.text: Callable[[], str] = lambda: ""
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await run_db(self.store.update_reply, self.message_id, self.text())
            except Exception as e:  # a busy database must not end the reply
                logger.warning("heartbeat of %s failed: %r", self.message_id, e)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


@dataclass
class _Reply:
    """Everything one streaming reply holds."""

    key: ApiKey
    plan: PromptPlan
    admission: Admission
    response: httpx.Response
    user_message: Message | None
    message: Message
    beat: _Heartbeat
    parts: list[str] = field(default_factory=list)
    calls: ToolCallParts = field(default_factory=ToolCallParts)
    status: str = "failed"
    finish_reason: str | None = None
    usage: Usage | None = None
    error: str | None = None
    is_finished: bool = False

    @property
    def text(self) -> str:
        return "".join(self.parts)


class ChatService:
    def __init__(self, backends: Backends, config: ChatConfig) -> None:
        self.store, self.upstream = backends.store, backends.upstream
        self.limiter, self.counter = backends.limiter, backends.counter
        self.backends, self.config = backends, config

    async def reply(
        self,
        key: ApiKey,
        conv: Conversation,
        opts: ReplyOptions,
        content: str | None,
    ) -> ClosingStreamingResponse:
        """Answer `content` (or, when None, regenerate the last reply) as an SSE stream.

        Raises ConflictError if a reply is still streaming, StorageQuotaError if `content`
        would take the user past their stored bytes; then, with the messages it
        stored dropped again: InvalidRequestError / ContextLengthExceededError,
        RateLimitError, UpstreamError."""
        turns, replace = await self._turns(conv, content)
        title = None if conv.title or content is None else self._title(content)
        stale_before = time.time() - self.config.stale_after_s
        user_message, message = await run_db(
            self.store.start_reply,
            conv.conversation_id,
            content,
            title,
            stale_before,
            self.config.max_stored_bytes_per_user,
        )
        beat = _Heartbeat(self.store, message.message_id, self.config.flush_interval_s)
        beat.start()
        try:
            plan, admission, response = await self._admit_and_open(key, conv, turns, opts)
        except BaseException as e:
            with anyio.CancelScope(shield=True):
                await beat.stop()
                await self._unstore(e, message, user_message)
            raise
        reply = _Reply(key, plan, admission, response, user_message, message, beat)
        beat.text = lambda: reply.text
        try:
            replace_id = None if replace is None else replace.message_id
            await run_db(self.store.accept_reply, message.message_id, replace_id)
            await self._keep_context_start(conv, plan, user_message)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._finish(reply)
            raise
        headers = {**admission.headers, "cache-control": "no-cache", "x-accel-buffering": "no"}

        async def stop_if_unfinished() -> None:
            reply.status = "stopped" if not reply.is_finished else reply.status
            await self._finish(reply)

        # NOTE: on_close ends the reply even if the client left before its first byte, when
        # the body never runs: the upstream is closed and the slot given back.
        return ClosingStreamingResponse(
            self._relay(reply), headers=headers, on_close=[stop_if_unfinished]
        )

    async def _admit_and_open(
        self, key: ApiKey, conv: Conversation, turns: list[Turn], opts: ReplyOptions
    ) -> tuple[PromptPlan, Admission, Any]:
        """The reply's prompt, its admission against the key's limits, and the upstream's
        response; the admission given back if the upstream refuses."""
        plan = await self._plan(conv, turns, opts)
        admission = await self.limiter.admit(key, plan.num_prompt_tokens + plan.max_tokens, True)
        try:
            return plan, admission, await self._open(conv, plan, opts)
        except BaseException:
            await admission.release()
            raise

    async def _turns(
        self, conv: Conversation, content: str | None
    ) -> tuple[list[Turn], Message | None]:
        """The turns to answer, and the reply a regeneration replaces (400 if nothing to
        answer or `content` is too long)."""
        history = await run_db(self.store.list_messages, conv.conversation_id)
        replace = None
        if content is None:
            if history and history[-1].role == "assistant":
                replace, history = history[-1], history[:-1]
            if not history:
                raise InvalidRequestError("There is no message to answer again.")
        elif len(content) > self.config.max_message_chars:
            raise InvalidRequestError(
                f"content is over {self.config.max_message_chars} characters", param="content"
            )
        turns = [
            Turn(m.seq, m.role, m.content, m.tool_calls)
            for m in history
            if m.role == "user" or m.content or m.tool_calls
        ]
        if content is not None:
            turns.append(Turn(_NEW_SEQ, "user", content))
        return turns, replace

    async def _unstore(
        self, e: BaseException, message: Message, user_message: Message | None
    ) -> None:
        """Undo start_reply for a reply that never began streaming."""
        if isinstance(e, Exception):  # refused: as if never asked
            user_id = None if user_message is None else user_message.message_id
            await run_db(self.store.drop_reply, message.message_id, user_id)
        else:  # the client left while the upstream was being asked
            end = ReplyEnd("stopped", "", None, None, Usage())
            await run_db(self.store.finish_reply, message.message_id, end)

    async def _keep_context_start(
        self, conv: Conversation, plan: PromptPlan, user_message: Message | None
    ) -> None:
        start = plan.context_start
        if start == _NEW_SEQ and user_message is not None:
            start = user_message.seq
        if start != conv.context_start:
            await run_db(self.store.update_conversation, conv.conversation_id, context_start=start)

    def _title(self, content: str) -> str:
        line = " ".join(content.split())
        n = self.config.title_chars
        return line if len(line) <= n else line[: n - 1].rstrip() + "…"

    async def _plan(self, conv: Conversation, turns: list[Turn], opts: ReplyOptions) -> PromptPlan:
        if not turns or turns[-1].role != "user":
            raise InvalidRequestError("The conversation does not end with a message to answer.")
        c = self.config
        max_model_len = c.max_model_len or await self.upstream.max_model_len()
        max_tokens = min(opts.max_tokens or c.reply_max_tokens, c.reply_max_tokens)
        # The tools' description takes its part of the context, whatever turns are kept, and
        # is prompt like the turns: reserved, and billed if the reply stops before its usage.
        num_tool_tokens = await run_tokenize(self.counter.count_tools, conv.tools, conv.tool_choice)
        plan = await run_tokenize(
            plan_prompt,
            self.counter,
            conv.system_prompt,
            turns,
            max_model_len - num_tool_tokens,
            max_tokens,
            conv.context_start,
            c.trim_slack_tokens,
        )
        return dataclasses.replace(plan, num_prompt_tokens=plan.num_prompt_tokens + num_tool_tokens)

    async def _open(self, conv: Conversation, plan: PromptPlan, opts: ReplyOptions) -> Any:
        body: dict[str, Any] = {
            "messages": plan.messages,
            "max_tokens": plan.max_tokens,
            "temperature": self.config.default_temperature
            if opts.temperature is None
            else opts.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
            # The router's session policy keys on this (and on the session header).
            "user": conv.conversation_id,
        }
        if self.upstream.config.model:
            body["model"] = self.upstream.config.model
        if opts.top_p is not None:
            body["top_p"] = opts.top_p
        if opts.seed is not None:
            body["seed"] = opts.seed
        if conv.tools:
            body["tools"] = conv.tools
            if conv.tool_choice is not None:
                body["tool_choice"] = conv.tool_choice
        if (salt := self.backends.cache_salt(conv.user_id)) is not None:
            body["cache_salt"] = salt
        headers = self.upstream.headers(session_id=conv.conversation_id)
        return await self.upstream.open(
            "POST", "/v1/chat/completions", json.dumps(body).encode(), headers
        )

    async def _relay(self, reply: _Reply) -> AsyncIterator[str]:
        stale = self.config.stale_after_s
        try:
            yield sse.event(
                {
                    "type": "start",
                    "user_message": None
                    if reply.user_message is None
                    else message_json(reply.user_message, stale),
                    "message": message_json(reply.message, stale),
                    "context": {
                        "num_dropped_messages": reply.plan.num_dropped,
                        "max_tokens": reply.plan.max_tokens,
                    },
                }
            )
            async for piece in self._consume(reply):
                yield piece
        except BaseException as e:
            stopped = isinstance(e, asyncio.CancelledError | GeneratorExit)
            reply.status = "stopped" if stopped else "failed"
            if not stopped:
                reply.error = f"internal error: {type(e).__name__}"
            with anyio.CancelScope(shield=True):
                await self._finish(reply)
            raise
        with anyio.CancelScope(shield=True):
            message = await self._finish(reply)
        if message is not None:
            yield sse.event({"type": "end", "message": message_json(message, stale)})
        yield sse.DONE

    async def _consume(self, reply: _Reply) -> AsyncIterator[str]:
        """Relay the upstream's deltas; sets the reply's status, finish reason, usage, error."""
        try:
            async for data in sse.aiter_data(reply.response.aiter_lines()):
                if data is None:
                    yield sse.KEEP_ALIVE
                    continue
                if data == "[DONE]":
                    break
                chunk = parse_chat_chunk(data)
                if chunk.error is not None:
                    reply.error = chunk.error
                    break
                if chunk.text:
                    reply.parts.append(chunk.text)
                    yield sse.event({"type": "delta", "content": chunk.text})
                if chunk.tool_calls:
                    for delta in chunk.tool_calls:
                        reply.calls.add(delta)
                    # "content" stays in every delta, so clients that only read text keep working.
                    calls = list(chunk.tool_calls)
                    yield sse.event({"type": "delta", "content": "", "tool_calls": calls})
                reply.finish_reason = chunk.finish_reason or reply.finish_reason
                reply.usage = chunk.usage or reply.usage
        except httpx.HTTPError as e:
            reply.error = f"the upstream failed mid-reply ({type(e).__name__})"
        if reply.error is None and reply.finish_reason is None:
            reply.error = "the upstream ended the reply without finishing it"
        reply.status = "complete" if reply.error is None else "failed"

    async def _finish(self, reply: _Reply) -> Message | None:
        """Store how the reply ended and its usage (one transaction), settle its limits.
        Acts once; later calls return None."""
        if reply.is_finished:
            return None
        reply.is_finished = True
        await reply.beat.stop()
        # NOTE: closing an unfinished upstream response drops the connection, which is how
        # the upstream (router or replica) learns to abort the request.
        await reply.response.aclose()
        usage = reply.usage
        if usage is None:
            generated = reply.text + reply.calls.text
            completion = await run_tokenize(self.counter.count_text, generated)
            usage = Usage(reply.plan.num_prompt_tokens, completion, 0)
        end = ReplyEnd(
            reply.status, reply.text, reply.finish_reason, reply.error, usage, reply.calls.as_list()
        )
        owner = UsageOwner(today(), reply.key.user_id, reply.key.key_id)
        try:
            return await run_db(self.store.finish_reply, reply.message.message_id, end, owner)
        finally:
            await reply.admission.settle(usage.prompt_tokens + usage.completion_tokens)
            await reply.admission.release()
