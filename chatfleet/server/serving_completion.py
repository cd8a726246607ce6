"""POST /v1/completions: raw prompts (text or token ids, one or many), text_completion objects."""

from __future__ import annotations

from typing import Any

from chatfleet.errors import InvalidRequestError
from chatfleet.outputs import CompletionOutput, TokenLogprobs
from chatfleet.sampling_params import COMPLETIONS_MAX_TOKENS
from chatfleet.server.protocol import CompletionRequest
from chatfleet.server.serving_base import Job, OpenAIServing, finish_reason, token_piece


class OpenAIServingCompletion(OpenAIServing):
    object_name = "text_completion"
    chunk_object_name = "text_completion"
    id_prefix = "cmpl-"

    def make_job(self, body: Any) -> Job:
        req, model = self.parse(CompletionRequest, body)
        if req.suffix:
            raise InvalidRequestError("suffix is not supported", param="suffix")
        ids = [self.tokenizer.encode_prompt(p) if isinstance(p, str) else p for p in req.prompts()]
        vocab_size = self.tokenizer.vocab_size
        if any(not 0 <= t < vocab_size for p in ids for t in p):
            # NOTE: checked here, not only by the engine: echo decodes the prompt first.
            raise InvalidRequestError("prompt token id outside the vocabulary", param="prompt")
        max_tokens = req.max_tokens if req.max_tokens is not None else COMPLETIONS_MAX_TOKENS
        params = req.sampling_params(max_tokens, req.logprobs)
        echo = [self.tokenizer.decode(p) for p in ids] if req.echo else None
        job = Job(model, list(ids), params, req.stream, req.include_usage, echo)
        return self.router_extensions(job, req)

    def _logprobs(self, items: list[TokenLogprobs], text_offset: int) -> dict[str, Any]:
        tokens, token_logprobs, tops, offsets = [], [], [], []
        for item in items:
            text, _ = token_piece(self.tokenizer, item.token_id)
            tokens.append(text)
            token_logprobs.append(item.logprob)
            tops.append({token_piece(self.tokenizer, t)[0]: lp for t, lp in item.top})
            offsets.append(text_offset)
            text_offset += len(text)
        return {
            "tokens": tokens,
            "token_logprobs": token_logprobs,
            "top_logprobs": tops,
            "text_offset": offsets,
        }

    def choice(self, job: Job, prompt_index: int, c: CompletionOutput) -> dict[str, Any]:
        prefix = job.echo[prompt_index] if job.echo else ""
        logprobs = None if c.logprobs is None else self._logprobs(c.logprobs, len(prefix))
        index = job.choice_index(prompt_index, c)
        return _choice(index, prefix + c.text, logprobs, finish_reason(c.finish_reason))

    def opening_choices(self, job: Job) -> list[dict[str, Any]]:
        """With echo, each choice starts with its prompt's text."""
        if not job.echo:
            return []
        n = job.params.n
        return [_choice(i * n + k, text) for i, text in enumerate(job.echo) for k in range(n)]

    def delta_choice(self, job: Job, index: int, c: CompletionOutput) -> dict[str, Any] | None:
        if not (c.delta_text or c.delta_logprobs):
            return None
        # NOTE: text_offset counts from the start of the choice's whole text (its echoed
        # prompt included), as in the non-streamed body, not from the start of the chunk.
        echo = job.echo[index // job.params.n] if job.echo else ""
        offset = job.num_chars_sent.get(index, len(echo))
        job.num_chars_sent[index] = offset + len(c.delta_text)
        logprobs = self._logprobs(c.delta_logprobs, offset) if c.delta_logprobs else None
        return _choice(index, c.delta_text, logprobs)

    def finish_choice(self, job: Job, index: int, reason: str | None) -> dict[str, Any]:
        return _choice(index, "", finish_reason=reason)


def _choice(
    index: int,
    text: str,
    logprobs: dict[str, Any] | None = None,
    finish_reason: str | None = None,
) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
