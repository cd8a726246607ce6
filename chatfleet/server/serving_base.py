"""What chat and text completions share: one HTTP request -> one or more engine requests ->
a JSON body or an SSE stream of chunks.

    OpenAIServing.create(raw, body)
        make_job(body)            subclass: parse, validate, tokenize -> Job
        engine.generate per prompt, merged into one stream
        first output awaited      (errors up to here are 4xx/5xx statuses; a stream waits
                                   only keep_alive_s, then sends its headers and comments)
        stream:  opening chunk (subclass), delta chunks, finish chunks, usage chunk, [DONE]
                 (a failure after the first byte is an SSE error event, then [DONE])
        else:    every output collected, then one body of `choice`s (subclass)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from chatfleet.config.server_config import ServerConfig
from chatfleet.engine.engine_client import EngineClient
from chatfleet.errors import (
    ChatfleetError,
    ContextLengthExceededError,
    GrammarDeadEndError,
    InvalidRequestError,
)
from chatfleet.http import sse
from chatfleet.http.body import parse_model
from chatfleet.http.handlers import unless_disconnected
from chatfleet.http.http_errors import ModelNotFoundError, RequestTimeoutError
from chatfleet.http.streaming import ClosingStreamingResponse
from chatfleet.modelfile.tokenizer import Tokenizer
from chatfleet.outputs import CompletionOutput, RequestOutput
from chatfleet.sampling_params import SamplingParams
from chatfleet.server.merge import Merged, merge_streams
from chatfleet.server.protocol import SamplingFields
from chatfleet.server.server_metrics import ServerMetrics
from chatfleet.server.text_offsets import TextOffsets
from chatfleet.structured.tool_calls import ToolCallStream

RequestT = TypeVar("RequestT", bound=SamplingFields)
# OpenAI's finish reasons have no "abort"; an aborted request never reaches a client anyway.
# An "error" choice never reaches one either (it becomes an error response or event): only
# the metrics see it, under its own label.
_FINISH = {"stop": "stop", "length": "length", "abort": "stop", "error": "error"}


def finish_reason(reason: str | None) -> str | None:
    return None if reason is None else _FINISH[reason]


def token_piece(tokenizer: Tokenizer, token_id: int) -> tuple[str, list[int]]:
    """A token's text (invalid UTF-8 replaced) and its raw bytes, for logprobs."""
    raw = tokenizer.id_to_piece_bytes(token_id)
    return raw.decode("utf-8", errors="replace"), list(raw)


def rename_param(error: ChatfleetError, field_names: dict[str, str]) -> None:
    """Makes `error` name the request field its value came from."""
    if error.param is not None:
        error.param = field_names.get(error.param, error.param)


def usage_json(num_prompt: int, num_completion: int, num_cached: int) -> dict[str, Any]:
    return {
        "prompt_tokens": num_prompt,
        "completion_tokens": num_completion,
        "total_tokens": num_prompt + num_completion,
        "prompt_tokens_details": {"cached_tokens": num_cached},
    }


@dataclass
class Job:
    """What one HTTP request asks of the engine."""

    model: str
    prompts: list[str | list[int]]
    params: SamplingParams
    stream: bool
    include_usage: bool
    echo: list[str] | None = None  # completion echo: prompt texts to prepend
    parses_tool_calls: bool = False  # chat with tools: calls are parsed out of the text
    tool_streams: dict[int, ToolCallStream] = field(default_factory=dict)  # by choice index
    num_chars_sent: dict[int, int] = field(default_factory=dict)  # streamed text, by choice
    text_offsets: dict[int, TextOffsets] = field(default_factory=dict)  # streamed, by choice
    # An engine error's field -> the request field it came from ("max_tokens" may have been
    # sent as "max_completion_tokens").
    field_names: dict[str, str] = field(default_factory=dict)
    reports_token_ids: bool = False  # each chunk carries its token ids (for the router)
    skip_chars: int = 0  # a continued reply: characters of its text the client already has
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: int = field(default_factory=lambda: int(time.time()))
    arrival: float = field(default_factory=time.monotonic)

    def choice_index(self, prompt_index: int, choice: CompletionOutput) -> int:
        """Choices are numbered prompt by prompt: n per prompt."""
        return prompt_index * self.params.n + choice.index


class _Tracker:
    """Per-engine-request latency bookkeeping for the metrics."""

    def __init__(self, metrics: ServerMetrics, arrival: float) -> None:
        self.metrics, self.arrival = metrics, arrival
        self.last: dict[str, float] = {}

    def observe(self, out: RequestOutput) -> None:
        now = time.monotonic()
        prev = self.last.get(out.request_id)
        if prev is None:
            self.metrics.ttft.observe(now - self.arrival)
            if out.queue_time_s is not None:
                self.metrics.queue_time.observe(out.queue_time_s)
        else:
            self.metrics.itl.observe(now - prev)
        self.last[out.request_id] = now
        if out.finished:
            self.metrics.e2e.observe(now - self.arrival)
            self.metrics.prompt_tokens.inc(out.num_prompt_tokens)
            self.metrics.generation_tokens.inc(out.num_output_tokens)
            for c in out.outputs:
                reason = finish_reason(c.finish_reason) or "stop"
                self.metrics.request_success.labels(self.metrics.model_name, reason).inc()


class OpenAIServing(ABC):
    """One OpenAI endpoint over an EngineClient; subclasses say how requests are read and
    how choices and chunks look."""

    object_name: str  # of the whole response ("chat.completion")
    chunk_object_name: str  # of each streamed chunk
    id_prefix: str

    def __init__(self, engine: EngineClient, config: ServerConfig, metrics: ServerMetrics) -> None:
        self.engine, self.config, self.metrics = engine, config, metrics
        self.tokenizer = engine.tokenizer

    # ---- what subclasses define ---------------------------------------------------------
    @abstractmethod
    def make_job(self, body: Any) -> Job:
        """Parse and check the request body; raises InvalidRequestError (400) and kin."""

    @abstractmethod
    def choice(self, job: Job, prompt_index: int, c: CompletionOutput) -> dict[str, Any]:
        """One finished choice of the non-streamed body."""

    @abstractmethod
    def delta_choice(self, job: Job, index: int, c: CompletionOutput) -> dict[str, Any] | None:
        """What a step added to one choice (text, logprobs, tool-call pieces), as a chunk's
        choice; None when there is nothing to send."""

    @abstractmethod
    def finish_choice(self, job: Job, index: int, reason: str | None) -> dict[str, Any]:
        """The chunk's choice that ends choice `index` with `reason`."""

    def opening_choices(self, job: Job) -> list[dict[str, Any]]:
        """The choices of the stream's first chunk, sent before any token (none by default)."""
        return []

    # ---- shared parsing helpers ---------------------------------------------------------
    def router_extensions(self, job: Job, req: SamplingFields) -> Job:
        """The router's fields: token ids in every chunk; a reply continued from another
        replica, streamed from where the client's copy ends (one plain-text choice)."""
        job.reports_token_ids = req.chatfleet_token_ids
        if req.chatfleet_continue is None:
            return job
        if not job.stream or len(job.prompts) > 1 or job.echo or job.parses_tool_calls:
            raise InvalidRequestError(
                "chatfleet_continue: only a stream of one prompt, without echo or tools",
                param="chatfleet_continue",
            )
        job.skip_chars = req.chatfleet_continue.sent_chars
        # text_offset counts from the start of the whole reply: past the tokens and the
        # characters its client had before.
        offsets = TextOffsets(self.tokenizer, 0, job.params.skip_special_tokens)
        for token_id in req.chatfleet_continue.token_ids:
            offsets.take(token_id)
        job.text_offsets[0], job.num_chars_sent[0] = offsets, job.skip_chars
        return job

    # ---- shared parsing helpers ---------------------------------------------------------
    def parse(self, schema: type[RequestT], body: Any) -> tuple[RequestT, str]:
        """The validated request and the model it names (the default when it names none)."""
        req = parse_model(schema, body)
        model = self.check_model(req.model)
        req.check_common()
        return req, model

    def check_model(self, model: str | None) -> str:
        if model is not None and model not in self.config.names:
            raise ModelNotFoundError(f"The model `{model}` does not exist.", param="model")
        return model or self.config.names[0]

    def room_for_output(self, num_prompt: int, param: str) -> int:
        """max_tokens when the request gives none: what is left of the context."""
        room = self.engine.max_model_len - num_prompt
        if room < 1:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {self.engine.max_model_len} tokens; "
                f"the prompt has {num_prompt}.",
                param=param,
            )
        return room

    # ---- execution ----------------------------------------------------------------------
    async def create(self, raw: Request, job: Job) -> Response:
        """Run `job` on the engine; the JSON body, or a StreamingResponse for stream=true."""
        # A continued reply goes ahead of new requests: its client is waiting mid-reply.
        priority = -1 if job.params.continue_token_ids else 0
        gens = [
            self.engine.generate(p, job.params, f"{job.request_id}-{i}", priority)
            for i, p in enumerate(job.prompts)
        ]
        merged = merge_streams(gens)
        tracker = _Tracker(self.metrics, job.arrival)
        deadline = job.arrival + self.config.request_timeout_s
        # NOTE: a stream waits for its first output only keep_alive_s: a request still queued
        # or in prefill then gets its headers and keep-alive comments (proxies cut silent
        # connections), and a later failure is an error event rather than a status.
        idle_s = self.config.keep_alive_s if job.stream else self.config.request_timeout_s
        pacer = sse.paced(merged, idle_s, deadline)
        try:
            first = await anext(pacer)
            while first is None and not job.stream:
                first = await anext(pacer)
        except BaseException as e:
            await pacer.aclose()
            await merged.aclose()
            if isinstance(e, TimeoutError):
                raise RequestTimeoutError("the request timed out before its first token") from None
            if isinstance(e, ChatfleetError):
                rename_param(e, job.field_names)
            raise
        if job.stream:
            body = self._stream(job, first, merged, pacer, tracker)
            # NOTE: closing `merged` aborts the engine requests even if the body never ran.
            return ClosingStreamingResponse(body, on_close=[pacer.aclose, merged.aclose])
        await pacer.aclose()  # nothing pending: `first` was its last item
        assert first is not None
        try:
            finals = await self._collect(raw, first, merged, tracker, deadline)
        finally:
            await merged.aclose()
        return JSONResponse(self._body(job, finals))

    async def _collect(
        self,
        raw: Request,
        first: tuple[int, RequestOutput],
        merged: Merged,
        tracker: _Tracker,
        deadline: float,
    ) -> dict[int, RequestOutput]:
        finals: dict[int, RequestOutput] = {}

        async def consume() -> None:
            i, out = first
            tracker.observe(out)
            finals[i] = out
            async for i, out in merged:
                tracker.observe(out)
                finals[i] = out

        remaining = max(deadline - time.monotonic(), 0.0)
        try:
            await unless_disconnected(raw, asyncio.wait_for(consume(), remaining))
        except TimeoutError:
            raise RequestTimeoutError("the request timed out and was aborted") from None
        return finals

    def _body(self, job: Job, finals: dict[int, RequestOutput]) -> dict[str, Any]:
        choices = []
        for i in sorted(finals):
            _raise_if_failed(finals[i])
            choices += [self.choice(job, i, c) for c in finals[i].outputs]
        return {
            "id": self.id_prefix + job.request_id,
            "object": self.object_name,
            "created": job.created,
            "model": job.model,
            "choices": choices,
            "usage": _usage(finals.values()),
        }

    def _chunk(self, job: Job, choices: list[dict[str, Any]], **extra: Any) -> str:
        body = {
            "id": self.id_prefix + job.request_id,
            "object": self.chunk_object_name,
            "created": job.created,
            "model": job.model,
            "choices": choices,
        }
        if job.include_usage and choices:
            # As OpenAI: with include_usage every chunk before the usage chunk has usage null.
            body["usage"] = None
        return sse.event({**body, **extra})

    def _step_chunks(self, job: Job, i: int, out: RequestOutput) -> Iterator[str]:
        _raise_if_failed(out)
        for c in out.outputs:
            index = job.choice_index(i, c)
            if job.skip_chars and c.delta_text:  # the client has this much of a continued reply
                cut = min(job.skip_chars, len(c.delta_text))
                job.skip_chars -= cut
                c = dataclasses.replace(c, delta_text=c.delta_text[cut:])
            ids = {"chatfleet_token_ids": c.delta_token_ids} if job.reports_token_ids else {}
            if c.delta_text or c.delta_logprobs or c.finished:
                delta = self.delta_choice(job, index, c)
                if delta is not None:
                    yield self._chunk(job, [delta], **ids)
                    ids = {}
            if ids and c.delta_token_ids:  # tokens whose text is held back: ids alone
                yield self._chunk(job, [], **ids)
            if c.finished and c.delta_token_ids:
                reason = finish_reason(c.finish_reason)
                yield self._chunk(job, [self.finish_choice(job, index, reason)])

    async def _stream(
        self,
        job: Job,
        first: tuple[int, RequestOutput] | None,
        merged: Merged,
        pacer: AsyncGenerator[tuple[int, RequestOutput] | None, None],
        tracker: _Tracker,
    ) -> AsyncIterator[str]:
        """SSE in OpenAI's chunk format, a keep-alive comment after every silent keep_alive_s
        (`first` is None when the first output has not come yet); a failure after the
        headers is an error event, then [DONE]."""
        totals: dict[int, RequestOutput] = {}

        def take(item: tuple[int, RequestOutput]) -> bool:
            """Record one output; True once every engine request has finished."""
            tracker.observe(item[1])
            totals[item[0]] = item[1]
            return len(totals) == len(job.prompts) and all(o.finished for o in totals.values())

        # NOTE: the engine streams are closed (aborted if unfinished) however the response
        # ends, the client leaving before the first chunk included.
        async with contextlib.aclosing(merged), contextlib.aclosing(pacer):
            try:
                while first is None:
                    yield sse.KEEP_ALIVE
                    first = await anext(pacer)
                # A continued reply's client has had its opening chunk.
                opening = [] if job.params.continue_token_ids else self.opening_choices(job)
                if opening:
                    yield self._chunk(job, opening)
                is_done = take(first)
                for piece in self._step_chunks(job, *first):
                    yield piece
                while not is_done:
                    item = await anext(pacer)
                    if item is None:
                        yield sse.KEEP_ALIVE
                        continue
                    is_done = take(item)
                    for piece in self._step_chunks(job, *item):
                        yield piece
                if job.include_usage:
                    yield self._chunk(job, [], usage=_usage(totals.values()))
            except (TimeoutError, ChatfleetError, StopAsyncIteration) as e:
                if isinstance(e, TimeoutError):
                    e = RequestTimeoutError("the request timed out and was aborted")
                yield sse.error_event(e)
        yield sse.DONE


def _raise_if_failed(out: RequestOutput) -> None:
    """A choice that ended in error fails the response (an error event in a stream)."""
    for c in out.outputs:
        if c.finish_reason == "error":
            raise GrammarDeadEndError(c.error or "generation failed", param=None)


def _usage(outputs: Any) -> dict[str, Any]:
    outs = list(outputs)
    return usage_json(
        sum(o.num_prompt_tokens for o in outs),
        sum(o.num_output_tokens for o in outs),
        sum(o.num_cached_tokens for o in outs),
    )
