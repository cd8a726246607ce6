"""Completions' `text_offset`: where each token of a choice starts in its text."""

from __future__ import annotations

import codecs

from chatfleet.modelfile.tokenizer import Tokenizer


class TextOffsets:
    """Where each token of one choice starts in its text (completions' `text_offset`): the
    number of characters the tokens before it decode to, from `start` on.

    NOTE: counted from decoded bytes, not from each token's own piece: a token that ends
    inside a UTF-8 character adds nothing until the character completes, so every token of a
    split character points at where that character starts in the returned text."""

    def __init__(self, tokenizer: Tokenizer, start: int, skip_special_tokens: bool) -> None:
        self._tokenizer = tokenizer
        self._skipped = tokenizer.special_token_ids if skip_special_tokens else frozenset()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._num_chars = start

    def take(self, token_id: int) -> int:
        """The offset of `token_id`, the choice's next token; moves past its text."""
        offset = self._num_chars
        raw = b"" if token_id in self._skipped else self._tokenizer.id_to_piece_bytes(token_id)
        self._num_chars += len(self._decoder.decode(raw))
        return offset
