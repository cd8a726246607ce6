"""RequestOutput -> OpenAI response objects (chat.completion, text_completion, chunks)."""

from __future__ import annotations

from typing import Any

from chatfleet.engine.outputs import TokenLogprobs
from chatfleet.model.tokenizer import Tokenizer

# OpenAI's finish reasons have no "abort"; an aborted request never reaches a client anyway.
_FINISH = {"stop": "stop", "length": "length", "abort": "stop"}


def finish_reason(reason: str | None) -> str | None:
    return None if reason is None else _FINISH[reason]


def usage(num_prompt: int, num_completion: int, num_cached: int) -> dict[str, Any]:
    return {
        "prompt_tokens": num_prompt,
        "completion_tokens": num_completion,
        "total_tokens": num_prompt + num_completion,
        "prompt_tokens_details": {"cached_tokens": num_cached},
    }


def _piece(tokenizer: Tokenizer, token_id: int) -> tuple[str, list[int]]:
    raw = tokenizer.id_to_piece_bytes(token_id)
    return raw.decode("utf-8", errors="replace"), list(raw)


def chat_logprobs(tokenizer: Tokenizer, items: list[TokenLogprobs]) -> dict[str, Any]:
    content = []
    for item in items:
        text, raw = _piece(tokenizer, item.token_id)
        top = []
        for token_id, lp in item.top:
            t, b = _piece(tokenizer, token_id)
            top.append({"token": t, "logprob": lp, "bytes": b})
        content.append({"token": text, "logprob": item.logprob, "bytes": raw, "top_logprobs": top})
    return {"content": content}


def completion_logprobs(
    tokenizer: Tokenizer, items: list[TokenLogprobs], text_offset: int
) -> dict[str, Any]:
    tokens, token_logprobs, tops, offsets = [], [], [], []
    for item in items:
        text, _ = _piece(tokenizer, item.token_id)
        tokens.append(text)
        token_logprobs.append(item.logprob)
        tops.append({_piece(tokenizer, t)[0]: lp for t, lp in item.top})
        offsets.append(text_offset)
        text_offset += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": tops,
        "text_offset": offsets,
    }
