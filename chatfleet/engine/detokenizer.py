"""Incremental detokenization with stop strings, one object per request.

Plain Python over token ids: the tokenizer is only asked to `decode` short windows, so this
module imports neither torch nor the tokenizer module.
"""

from __future__ import annotations

from typing import Protocol

# Prompt tokens decoded as left context, so tokenizers whose decoding depends on the previous
# token (SentencePiece's leading-space rule) produce the same text as a full decode.
NUM_CONTEXT_TOKENS = 5
REPLACEMENT_CHAR = "\ufffd"  # what a decoder writes for an incomplete UTF-8 sequence


class TokenDecoder(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str: ...


class IncrementalDetokenizer:
    """Turns generated token ids into streamable text deltas and watches for stop strings.

    Text moves through three stages:

        token ids --decode window--> pending text --no stop prefix at its end--> emitted text

    A token that ends mid-way through a UTF-8 character stays undecoded until the character
    completes; pending text that could be the start of a stop string is held until resolved.
    Concatenating every delta plus `flush()` gives `decode(output_ids)` when no stop matched.
    """

    def __init__(
        self,
        tokenizer: TokenDecoder,
        prompt_token_ids: list[int],
        stop: list[str],
        include_stop_str_in_output: bool,
        skip_special_tokens: bool,
    ) -> None:
        self._tokenizer = tokenizer
        # NOTE: an empty stop string would match at once; SamplingParams rejects it, skip it here.
        self._stop = [s for s in stop if s]
        self._include_stop = include_stop_str_in_output
        self._skip_special_tokens = skip_special_tokens
        context = list(prompt_token_ids[-NUM_CONTEXT_TOKENS:])
        if self._decode(context).endswith(REPLACEMENT_CHAR):
            # The prompt ends mid-character; its bytes must not merge into the output's text.
            context = []
        # Window of ids still needed for decoding:
        #
        #   _window: [ already emitted (context) | not yet emitted ]
        #            0                    _num_read            len(_window)
        self._window = context
        self._num_read = len(context)
        self._pending = ""  # decoded but not emitted: may be the start of a stop string
        self._output_text = ""
        self._matched_stop: str | None = None

    @property
    def output_text(self) -> str:
        """Everything emitted so far (the final text once `flush()` has run)."""
        return self._output_text

    @property
    def matched_stop(self) -> str | None:
        """The stop string that ended generation, or None."""
        return self._matched_stop

    def update(self, new_token_ids: list[int]) -> tuple[str, str | None]:
        """Adds generated ids; returns `(delta_text, matched_stop)`.

        `delta_text` is the text safe to stream now (may be empty). On a stop-string match the
        output is truncated at it (kept if `include_stop_str_in_output`), the stop string is
        returned and the request should finish; later calls return `("", None)`.
        """
        if self._matched_stop is not None:
            return "", None
        for token_id in new_token_ids:
            self._window.append(token_id)
            self._pending += self._decode_new_text()
        match = self._find_stop()
        if match is not None:
            start, stop = match
            self._matched_stop = stop
            return self._emit(start + len(stop) if self._include_stop else start), stop
        return self._emit(len(self._pending) - self._partial_stop_len()), None

    def flush(self) -> str:
        """Ends generation without a stop match; returns all held-back text.

        Includes a trailing incomplete UTF-8 sequence as U+FFFD, as a full decode would.
        Returns "" if a stop string matched.
        """
        if self._matched_stop is not None:
            return ""
        emitted = self._decode(self._window[: self._num_read])
        self._pending += self._decode(self._window)[len(emitted) :]
        self._num_read = len(self._window)
        return self._emit(len(self._pending))

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip_special_tokens)

    def _decode_new_text(self) -> str:
        """Text added by the unread ids, or "" while it ends in an incomplete character.

        Mutates the window: on success the old emitted part is dropped and the unread part
        becomes the left context for the next call.
        """
        emitted = self._decode(self._window[: self._num_read])
        full = self._decode(self._window)
        if len(full) <= len(emitted) or full.endswith(REPLACEMENT_CHAR):
            return ""
        self._window = self._window[self._num_read :]
        self._num_read = len(self._window)
        return full[len(emitted) :]

    def _find_stop(self) -> tuple[int, str] | None:
        """(start index in pending, stop) of the stop string that completes first, or None.

        Pending holds every possible partial stop, so a match always lies wholly inside it.
        """
        best: tuple[int, int, str] | None = None  # (end, start, stop)
        for stop in self._stop:
            start = self._pending.find(stop)
            if start >= 0 and (best is None or (start + len(stop), start) < best[:2]):
                best = (start + len(stop), start, stop)
        return None if best is None else (best[1], best[2])

    def _partial_stop_len(self) -> int:
        """Length of the longest suffix of pending that is a proper prefix of a stop string."""
        longest = 0
        for stop in self._stop:
            for length in range(min(len(stop) - 1, len(self._pending)), longest, -1):
                if self._pending.endswith(stop[:length]):
                    longest = length
                    break
        return longest

    def _emit(self, num_chars: int) -> str:
        """Moves the first `num_chars` of pending to the output; drops pending after a stop."""
        delta = self._pending[:num_chars]
        self._pending = "" if self._matched_stop is not None else self._pending[num_chars:]
        self._output_text += delta
        return delta
