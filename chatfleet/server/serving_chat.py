"""POST /v1/chat/completions: messages through the chat template, chat.completion objects."""

from __future__ import annotations

from typing import Any

from chatfleet.outputs import CompletionOutput, TokenLogprobs
from chatfleet.server.protocol import ChatCompletionRequest
from chatfleet.server.serving_base import Job, OpenAIServing, finish_reason, token_piece


class OpenAIServingChat(OpenAIServing):
    object_name = "chat.completion"
    chunk_object_name = "chat.completion.chunk"
    id_prefix = "chatcmpl-"

    def make_job(self, body: Any) -> Job:
        req, model = self.parse(ChatCompletionRequest, body)
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        prompt = self.tokenizer.apply_chat_template(messages)
        max_tokens = req.requested_max_tokens()
        if max_tokens is None:
            max_tokens = self.room_for_output(len(prompt), "messages")
        params = req.sampling_params(max_tokens, req.num_logprobs())
        return Job(model, [prompt], params, req.stream, req.include_usage)

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
        return {
            "index": job.choice_index(prompt_index, c),
            "message": {"role": "assistant", "content": c.text},
            "logprobs": None if c.logprobs is None else self._logprobs(c.logprobs),
            "finish_reason": finish_reason(c.finish_reason),
        }

    def opening_choices(self, job: Job) -> list[dict[str, Any]]:
        """The role chunk: every choice starts as an empty assistant message."""
        delta = {"role": "assistant", "content": ""}
        num_choices = len(job.prompts) * job.params.n
        return [_chunk_choice(k, delta) for k in range(num_choices)]

    def delta_choice(self, job: Job, index: int, c: CompletionOutput) -> dict[str, Any]:
        logprobs = self._logprobs(c.delta_logprobs) if c.delta_logprobs else None
        return _chunk_choice(index, {"content": c.delta_text}, logprobs)

    def finish_choice(self, index: int, reason: str | None) -> dict[str, Any]:
        return _chunk_choice(index, {}, finish_reason=reason)


def _chunk_choice(
    index: int,
    delta: dict[str, Any],
    logprobs: dict[str, Any] | None = None,
    finish_reason: str | None = None,
) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
