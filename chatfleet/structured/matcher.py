"""The engine's side of structured output, on llguidance: one matcher per request, and each
step's token masks for the whole batch, filled on a worker thread while the forward pass runs.

    add_request:  GrammarCompiler.matcher(grammar)      compile errors -> InvalidRequestError
    step:         rows that truncate (top-k / top-p / min-p) need their mask before sampling:
                    GrammarCompiler.start_masks(requests) -> TokenMasks (a future bitmask),
                    runner: logits, then TokenMasks.wait() applied to those rows
                  every other grammar row samples first and is checked after (sampler.py):
                    matcher.allows(token), and only if not, matcher.bitmask() and a resample
                  scheduler: matcher.accept(token); a refused token ends the request (error)

NOTE: llguidance has no dependencies; xgrammar, the other candidate, names torch and triton
without versions (another torch build, GBs of CUDA wheels). Its per-step cost:
benchmarks/grammar_masks.py.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Sequence

import llguidance
import torch

from chatfleet.errors import InvalidRequestError
from chatfleet.modelfile.tokenizer import Tokenizer
from chatfleet.sampling_params import Grammar
from chatfleet.step import TokenMasks


class GrammarMatcher:
    """Where one request stands in its grammar; advanced by each token it samples."""

    def __init__(self, matcher: llguidance.LLMatcher) -> None:
        self._m = matcher

    def allows(self, token_id: int) -> bool:
        """Whether the grammar would accept `token_id` now (nothing is consumed)."""
        return self._m.validate_tokens([token_id]) == 1

    def bitmask(self) -> torch.Tensor:
        """The tokens allowed now: [ceil(vocab / 32)] int32, bit set = allowed."""
        return torch.frombuffer(bytearray(self._m.compute_bitmask()), dtype=torch.int32)

    def accept(self, token_id: int) -> bool:
        """Advance by one sampled token; False (and an error state) if the grammar refuses it."""
        return self._m.consume_token(token_id) and not self._m.is_error()

    @property
    def error(self) -> str:
        first = (self._m.get_error() or "").split("\n", 1)[0][:300]
        return f"the grammar allows no further token ({first})" if first else "dead end"

    def fork(self) -> GrammarMatcher:
        return GrammarMatcher(self._m.deep_copy())


class GrammarCompiler:
    """Builds matchers for one tokenizer and fills batches of masks."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, num_threads: int) -> None:
        # The model's logits may be wider than the tokenizer's vocabulary (padding rows).
        self._tokenizer = llguidance.LLTokenizer(
            tokenizer.to_json(), n_vocab=vocab_size, eos_token=tokenizer.eos_token_ids
        )
        self.vocab_size = vocab_size
        self._executor = llguidance.LLExecutor(num_threads)
        # One worker: a step's masks are filled while the same step's forward pass runs.
        self._worker = concurrent.futures.ThreadPoolExecutor(1, "chatfleet-grammar")

    def matcher(self, grammar: Grammar) -> GrammarMatcher:
        """A matcher at the grammar's start; InvalidRequestError naming the field if the
        grammar (a schema, a tool's parameters) does not compile."""
        m = llguidance.LLMatcher(self._tokenizer, grammar.source, log_level=0)
        if m.is_error():
            raise InvalidRequestError(
                f"{grammar.param}: cannot be enforced: {m.get_error()}", param=grammar.param
            )
        return GrammarMatcher(m)

    def start_masks(
        self, request_ids: Sequence[str], matchers: Sequence[GrammarMatcher]
    ) -> TokenMasks:
        """Fill the masks of `matchers` (one row each, in order) on the worker thread."""
        # NOTE: not llguidance.torch, whose import alone costs seconds (torch.compile).
        words = (self.vocab_size + 31) // 32
        bitmask = torch.full((len(matchers), words), -1, dtype=torch.int32)  # bit set = allowed

        def fill() -> torch.Tensor:
            rows = [(m._m, i) for i, m in enumerate(matchers)]
            self._executor.unsafe_compute_mask_ptr(rows, bitmask.data_ptr(), words * 4, len(rows))
            return bitmask

        return TokenMasks(list(request_ids), self._worker.submit(fill))

    def close(self) -> None:
        self._worker.shutdown(wait=True)
