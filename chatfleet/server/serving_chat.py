"""POST /v1/chat/completions: messages through the chat template, chat.completion objects;
with tools, calls parsed out of the reply (whole, or as tool-call deltas in a stream)."""

from __future__ import annotations

import json
from typing import Any

from chatfleet.errors import ChatfleetError, InvalidRequestError
from chatfleet.modelfile.tokenizer import Tokenizer
from chatfleet.outputs import CompletionOutput, TokenLogprobs
from chatfleet.server.protocol import ChatCompletionRequest, ChatMessage
from chatfleet.server.serving_base import (
    Job,
    OpenAIServing,
    finish_reason,
    rename_param,
    token_piece,
)
from chatfleet.structured.tool_calls import (
    CALL_OPEN,
    ToolCallStream,
    parse_calls,
    render_call,
    tools_system_prompt,
)


class OpenAIServingChat(OpenAIServing):
    object_name = "chat.completion"
    chunk_object_name = "chat.completion.chunk"
    id_prefix = "chatcmpl-"

    def make_job(self, body: Any) -> Job:
        req, model = self.parse(ChatCompletionRequest, body)
        prompt = chat_prompt(self.tokenizer, req)
        max_tokens = req.requested_max_tokens()
        if max_tokens is None:
            max_tokens = self.room_for_output(len(prompt), "messages")
        try:
            params = req.sampling_params(max_tokens, req.num_logprobs())
        except ChatfleetError as e:
            rename_param(e, req.field_names())
            raise
        job = Job(model, [prompt], params, req.stream, req.include_usage)
        job.field_names = req.field_names()
        job.parses_tool_calls = req.tool_mode() is not None
        return self.router_extensions(job, req)

    def _logprobs(self, items: list[TokenLogprobs]) -> dict[str, Any]:
        content = []
        for item in items:
            text, raw = token_piece(self.tokenizer, item.token_id)
            top = []
            for token_id, lp in item.top:
                t, b = token_piece(self.tokenizer, token_id)
                top.append({"token": t, "logprob": lp, "bytes": b})
            entry = {"token": text, "logprob": item.logprob, "bytes": raw, "top_logprobs": top}
            content.append(entry)
        return {"content": content}

    def choice(self, job: Job, prompt_index: int, c: CompletionOutput) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": c.text}
        reason = finish_reason(c.finish_reason)
        if job.parses_tool_calls:
            content, calls = parse_calls(c.text)
            message["content"] = content
            if calls:
                message["tool_calls"] = [call.as_openai() for call in calls]
                reason = "tool_calls" if reason == "stop" else reason
        return {
            "index": job.choice_index(prompt_index, c),
            "message": message,
            "logprobs": None if c.logprobs is None else self._logprobs(c.logprobs),
            "finish_reason": reason,
        }

    def opening_choices(self, job: Job) -> list[dict[str, Any]]:
        """The role chunk: every choice starts as an empty assistant message."""
        delta = {"role": "assistant", "content": ""}
        num_choices = len(job.prompts) * job.params.n
        return [_chunk_choice(k, delta) for k in range(num_choices)]

    def delta_choice(self, job: Job, index: int, c: CompletionOutput) -> dict[str, Any] | None:
        logprobs = self._logprobs(c.delta_logprobs) if c.delta_logprobs else None
        if job.parses_tool_calls:
            stream = job.tool_streams.setdefault(index, ToolCallStream())
            delta = stream.feed(c.delta_text, is_last=c.finished)
        else:
            delta = {"content": c.delta_text} if c.delta_text else {}
        if not delta and logprobs is None:
            return None
        return _chunk_choice(index, delta, logprobs)

    def finish_choice(self, job: Job, index: int, reason: str | None) -> dict[str, Any]:
        stream = job.tool_streams.get(index)
        if stream is not None and stream.has_calls and reason == "stop":
            reason = "tool_calls"
        return _chunk_choice(index, {}, finish_reason=reason)


def chat_prompt(tokenizer: Tokenizer, req: ChatCompletionRequest) -> list[int]:
    """The prompt ids: tools go to a template that writes our call format, else into the
    system message; past calls and tool results are written in that format (never dropped)."""
    template = tokenizer.chat_template or ""
    native = "tools" in template and CALL_OPEN in template
    messages = [_template_message(m, native) for m in req.messages]
    tools = [t.as_openai() for t in req.function_tools()] if req.tool_mode() else None
    if native:
        # NOTE: the template writes these as markup: control-token text in them would
        # become control tokens (content never does).
        markup = json.dumps([tools, [m.get("tool_calls") for m in messages]])
        if tokenizer.has_special_text(markup):
            raise InvalidRequestError(
                "tools and tool calls must not contain the model's control tokens",
                param="tools",
            )
        return tokenizer.apply_chat_template(messages, tools=tools)
    if tools:
        described = tools_system_prompt(req.function_tools())
        if messages[0]["role"] in ("system", "developer"):
            head = messages[0]["content"]
            messages[0] = {**messages[0], "content": f"{head}\n\n{described}".lstrip()}
        else:
            messages.insert(0, {"role": "system", "content": described})
    return tokenizer.apply_chat_template(messages)


def _template_message(m: ChatMessage, native: bool) -> dict[str, Any]:
    """One request message as the chat template reads it."""
    text = m.text()
    if m.role == "assistant" and m.tool_calls:
        if native:  # templates read arguments as objects (they write them with tojson)
            calls = [
                {"type": "function", "function": {"name": c.function.name, "arguments": _args(c)}}
                for c in m.tool_calls
            ]
            return {"role": "assistant", "content": text, "tool_calls": calls}
        written = "\n".join(
            render_call(c.function.name, c.function.arguments) for c in m.tool_calls
        )
        return {"role": "assistant", "content": f"{text}\n{written}".lstrip("\n")}
    if m.role == "tool" and not native:
        return {"role": "user", "content": f"<tool_response>\n{text}\n</tool_response>"}
    message: dict[str, Any] = {"role": m.role, "content": text}
    if m.tool_call_id is not None:
        message["tool_call_id"] = m.tool_call_id
    return message


def _args(call: Any) -> Any:
    try:
        return json.loads(call.function.arguments)
    except ValueError:
        raise InvalidRequestError(
            f"tool call {call.id}: arguments must be JSON text", param="messages"
        ) from None


def _chunk_choice(
    index: int,
    delta: dict[str, Any],
    logprobs: dict[str, Any] | None = None,
    finish_reason: str | None = None,
) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
