"""POST /v1/completions: raw prompts (text or token ids, one or many), text_completion objects."""

from __future__ import annotations

from typing import Any

from chatfleet.errors import InvalidRequestError
from chatfleet.outputs import CompletionOutput, TokenLogprobs
from chatfleet.sampling_params import COMPLETIONS_MAX_TOKENS
from chatfleet.server.protocol import CompletionRequest
from chatfleet.server.serving_base import Job, OpenAIServing, finish_reason, token_piece
from chatfleet.server.text_offsets import TextOffsets


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

    def _logprobs(
        self, items: list[TokenLogprobs], text_offsets: TextOffsets, num_chars: int | None
    ) -> dict[str, Any]:
        """`num_chars`: the length of the choice's whole text, when known; no offset points
        past it (the tokens of a stop string cut from the text sit at its end)."""
        tokens, token_logprobs, tops, offsets = [], [], [], []
        for item in items:
            tokens.append(token_piece(self.tokenizer, item.token_id)[0])
            token_logprobs.append(item.logprob)
            tops.append({token_piece(self.tokenizer, t)[0]: lp for t, lp in item.top})
            offset = text_offsets.take(item.token_id)
            offsets.append(offset if num_chars is None else min(offset, num_chars))
        return {
            "tokens": tokens,
            "token_logprobs": token_logprobs,
            "top_logprobs": tops,
            "text_offset": offsets,
        }

    def choice(self, job: Job, prompt_index: int, c: CompletionOutput) -> dict[str, Any]:
        prefix = job.echo[prompt_index] if job.echo else ""
        text = prefix + c.text
        logprobs = None
        if c.logprobs is not None:
            offsets = self._text_offsets(job, len(prefix))
            logprobs = self._logprobs(c.logprobs, offsets, len(text))
        index = job.choice_index(prompt_index, c)
        return _choice(index, text, logprobs, finish_reason(c.finish_reason))

    def _text_offsets(self, job: Job, start: int) -> TextOffsets:
        return TextOffsets(self.tokenizer, start, job.params.skip_special_tokens)

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
        num_chars = job.num_chars_sent.get(index, len(echo)) + len(c.delta_text)
        job.num_chars_sent[index] = num_chars
        logprobs = None
        if c.delta_logprobs:
            if index not in job.text_offsets:
                job.text_offsets[index] = self._text_offsets(job, len(echo))
            offsets = job.text_offsets[index]
            # Text held back (a possible stop string) may still come, unless this is the end.
            limit = num_chars if c.finished else None
            logprobs = self._logprobs(c.delta_logprobs, offsets, limit)
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
