"""Chat and text completions: one HTTP request -> one or more engine requests -> JSON or SSE."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError

from chatfleet.engine.protocol import EngineClient
from chatfleet.errors import ChatfleetError, ContextLengthExceededError, InvalidRequestError
from chatfleet.outputs import RequestOutput
from chatfleet.sampling_params import SamplingParams
from chatfleet.server import formatting as fmt
from chatfleet.server.config import ServerConfig
from chatfleet.server.errors import ModelNotFoundError, RequestTimeoutError, to_error_response
from chatfleet.server.metrics import ServerMetrics
from chatfleet.server.protocol import ChatCompletionRequest, CompletionRequest


class ClientDisconnected(Exception):
    pass


@dataclass
class Job:
    """What one HTTP request asks of the engine."""

    kind: Literal["chat", "completion"]
    model: str
    prompts: list[str | list[int]]
    params: SamplingParams
    stream: bool
    include_usage: bool
    echo: list[str] | None = None  # completion echo: prompt texts to prepend
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: int = field(default_factory=lambda: int(time.time()))
    arrival: float = field(default_factory=time.monotonic)

    @property
    def id(self) -> str:
        return ("chatcmpl-" if self.kind == "chat" else "cmpl-") + self.request_id


def parse(model: type[BaseModel], body: Any) -> Any:
    """Validate a JSON body; the first problem becomes a 400 naming its field."""
    if not isinstance(body, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as e:
        err = e.errors()[0]
        param = ".".join(str(x) for x in err["loc"]) or None
        raise InvalidRequestError(f"{param}: {err['msg']}", param=param) from None


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
                reason = fmt.finish_reason(c.finish_reason) or "stop"
                self.metrics.request_success.labels(self.metrics.model_name, reason).inc()


async def _merge(
    gens: list[AsyncIterator[RequestOutput]],
) -> AsyncGenerator[tuple[int, RequestOutput], None]:
    """Interleave several engine streams; closing the merge aborts every unfinished one."""
    if len(gens) == 1:
        async with contextlib.aclosing(gens[0]) as g:  # type: ignore[type-var]
            async for out in g:
                yield 0, out
        return
    queue: asyncio.Queue[tuple[int, RequestOutput | BaseException | None]] = asyncio.Queue()

    async def pump(i: int, gen: AsyncIterator[RequestOutput]) -> None:
        try:
            async for out in gen:
                queue.put_nowait((i, out))
            queue.put_nowait((i, None))
        except Exception as e:
            queue.put_nowait((i, e))

    tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(gens)]
    try:
        remaining = len(gens)
        while remaining:
            i, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class OpenAIServing:
    def __init__(self, engine: EngineClient, config: ServerConfig, metrics: ServerMetrics) -> None:
        self.engine, self.config, self.metrics = engine, config, metrics
        self.tokenizer = engine.tokenizer

    # ---- request parsing --------------------------------------------------------------
    def _check_model(self, model: str | None) -> str:
        if model is not None and model not in self.config.model_names:
            raise ModelNotFoundError(f"The model `{model}` does not exist.", param="model")
        return model or self.config.model_names[0]

    def _max_tokens(self, requested: int | None, num_prompt: int, param: str) -> int | None:
        if requested is not None:
            return requested
        room = self.engine.max_model_len - num_prompt
        if room < 1:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {self.engine.max_model_len} tokens; "
                f"the prompt has {num_prompt}.",
                param=param,
            )
        return room

    def chat_job(self, body: Any) -> Job:
        req: ChatCompletionRequest = parse(ChatCompletionRequest, body)
        model = self._check_model(req.model)
        req.check_common()
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        prompt = self.tokenizer.apply_chat_template(messages)
        max_tokens = self._max_tokens(req.requested_max_tokens(), len(prompt), "messages")
        params = req.sampling_params(max_tokens, req.num_logprobs())
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return Job("chat", model, [prompt], params, req.stream, include_usage)

    def completion_job(self, body: Any) -> Job:
        req: CompletionRequest = parse(CompletionRequest, body)
        model = self._check_model(req.model)
        req.check_common()
        if req.suffix:
            raise InvalidRequestError("suffix is not supported", param="suffix")
        prompts = req.prompts()
        ids = [self.tokenizer.encode(p) if isinstance(p, str) else p for p in prompts]
        max_tokens = req.max_tokens if req.max_tokens is not None else 16
        params = req.sampling_params(max_tokens, req.logprobs)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        echo = [self.tokenizer.decode(p) for p in ids] if req.echo else None
        return Job("completion", model, list(ids), params, req.stream, include_usage, echo)

    # ---- execution --------------------------------------------------------------------
    async def execute(self, raw: Request, job: Job) -> Response:
        gens = [
            self.engine.generate(p, job.params, f"{job.request_id}-{i}")
            for i, p in enumerate(job.prompts)
        ]
        merged = _merge(gens)
        tracker = _Tracker(self.metrics, job.arrival)
        deadline = job.arrival + self.config.request_timeout_s
        try:
            # The first output proves the request was accepted (errors are still 4xx here).
            first = await asyncio.wait_for(anext(merged), max(deadline - time.monotonic(), 0.01))
        except BaseException as e:
            await merged.aclose()
            if isinstance(e, asyncio.TimeoutError):
                raise RequestTimeoutError("the request timed out before its first token") from None
            raise
        if job.stream:
            return StreamingResponse(
                self._sse(job, first, merged, tracker, deadline), media_type="text/event-stream"
            )
        try:
            finals = await self._collect(raw, first, merged, tracker, deadline)
        finally:
            await merged.aclose()
        return JSONResponse(self._final_body(job, finals))

    async def _collect(
        self,
        raw: Request,
        first: tuple[int, RequestOutput],
        merged: AsyncGenerator[tuple[int, RequestOutput], None],
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

        task = asyncio.create_task(consume())
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=self.config.disconnect_poll_s)
                if task.done():
                    break
                if await raw.is_disconnected():
                    raise ClientDisconnected()
                if time.monotonic() > deadline:
                    raise RequestTimeoutError("the request timed out and was aborted")
            task.result()
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        return finals

    def _final_body(self, job: Job, finals: dict[int, RequestOutput]) -> dict[str, Any]:
        choices = []
        num_prompt = num_completion = num_cached = 0
        n = job.params.n
        for i in sorted(finals):
            out = finals[i]
            num_prompt += out.num_prompt_tokens
            num_cached += out.num_cached_tokens
            for c in out.outputs:
                num_completion += len(c.token_ids)
                choices.append(self._choice(job, i * n + c.index, c, i))
        obj = "chat.completion" if job.kind == "chat" else "text_completion"
        return {
            "id": job.id,
            "object": obj,
            "created": job.created,
            "model": job.model,
            "choices": choices,
            "usage": fmt.usage(num_prompt, num_completion, num_cached),
        }

    def _choice(self, job: Job, index: int, c, prompt_index: int) -> dict[str, Any]:
        reason = fmt.finish_reason(c.finish_reason)
        if job.kind == "chat":
            logprobs = None if c.logprobs is None else fmt.chat_logprobs(self.tokenizer, c.logprobs)
            return {
                "index": index,
                "message": {"role": "assistant", "content": c.text},
                "logprobs": logprobs,
                "finish_reason": reason,
            }
        prefix = job.echo[prompt_index] if job.echo else ""
        logprobs = (
            None
            if c.logprobs is None
            else fmt.completion_logprobs(self.tokenizer, c.logprobs, len(prefix))
        )
        return {
            "index": index,
            "text": prefix + c.text,
            "logprobs": logprobs,
            "finish_reason": reason,
        }

    async def _sse(
        self,
        job: Job,
        first: tuple[int, RequestOutput],
        merged: AsyncGenerator[tuple[int, RequestOutput], None],
        tracker: _Tracker,
        deadline: float,
    ) -> AsyncIterator[str]:
        """SSE in OpenAI's chunk format; a failure mid-stream is an error event, then [DONE]."""
        n = job.params.n
        totals: dict[int, RequestOutput] = {}
        obj = "chat.completion.chunk" if job.kind == "chat" else "text_completion"

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
            body = {
                "id": job.id,
                "object": obj,
                "created": job.created,
                "model": job.model,
                "choices": choices,
                **extra,
            }
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        try:
            if job.kind == "chat":
                roles = [
                    {
                        "index": k,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                    for k in range(len(job.prompts) * n)
                ]
                yield chunk(roles)
            elif job.echo:
                yield chunk(
                    [
                        {"index": i * n + k, "text": text, "logprobs": None, "finish_reason": None}
                        for i, text in enumerate(job.echo)
                        for k in range(n)
                    ]
                )
            pending = [first]
            async with contextlib.aclosing(merged):
                while True:
                    for i, out in pending:
                        tracker.observe(out)
                        totals[i] = out
                        for c in out.outputs:
                            for piece in self._delta_choices(job, i * n + c.index, c):
                                yield chunk([piece])
                    if len(totals) == len(job.prompts) and all(o.finished for o in totals.values()):
                        break
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise RequestTimeoutError("the request timed out and was aborted")
                    pending = [await asyncio.wait_for(anext(merged), remaining)]
            if job.include_usage:
                usage = fmt.usage(
                    sum(o.num_prompt_tokens for o in totals.values()),
                    sum(o.num_output_tokens for o in totals.values()),
                    sum(o.num_cached_tokens for o in totals.values()),
                )
                yield chunk([], usage=usage)
        except (TimeoutError, ChatfleetError, StopAsyncIteration) as e:
            if isinstance(e, asyncio.TimeoutError):
                e = RequestTimeoutError("the request timed out and was aborted")
            yield f"data: {json.dumps(to_error_response(e).body)}\n\n"
        yield "data: [DONE]\n\n"

    def _delta_choices(self, job: Job, index: int, c) -> list[dict[str, Any]]:
        pieces = []
        if c.delta_text or c.delta_logprobs:
            if job.kind == "chat":
                lp = (
                    fmt.chat_logprobs(self.tokenizer, c.delta_logprobs)
                    if c.delta_logprobs
                    else None
                )
                pieces.append(
                    {
                        "index": index,
                        "delta": {"content": c.delta_text},
                        "logprobs": lp,
                        "finish_reason": None,
                    }
                )
            else:
                lp = (
                    fmt.completion_logprobs(self.tokenizer, c.delta_logprobs, 0)
                    if c.delta_logprobs
                    else None
                )
                pieces.append(
                    {"index": index, "text": c.delta_text, "logprobs": lp, "finish_reason": None}
                )
        if c.finished and c.delta_token_ids:
            reason = fmt.finish_reason(c.finish_reason)
            if job.kind == "chat":
                pieces.append(
                    {"index": index, "delta": {}, "logprobs": None, "finish_reason": reason}
                )
            else:
                pieces.append(
                    {"index": index, "text": "", "logprobs": None, "finish_reason": reason}
                )
        return pieces
