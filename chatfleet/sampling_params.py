"""User-facing sampling knobs, validated on construction.

Every invalid value raises `InvalidRequestError` whose `param` names the field, so the server
can answer with a precise 400 without re-validating.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from chatfleet.errors import InvalidRequestError

MAX_STOP_STRINGS = 4
MAX_N = 16
MAX_LOGPROBS = 20
COMPLETIONS_MAX_TOKENS = 16  # OpenAI's max_tokens when /v1/completions gives none
MAX_PROMPTS = 128  # prompts in one /v1/completions request (each an engine request per choice)
MAX_LOGIT_BIAS = 300  # token ids in one logit_bias map (OpenAI's limit)


@dataclass(frozen=True)
class Grammar:
    """What every sampled token must keep valid: a grammar in llguidance's Lark dialect (JSON
    schemas inlined as `%json {...}`), and the request field it came from, for errors."""

    source: str
    param: str


def _check(ok: bool, param: str, message: str) -> None:
    if not ok:
        raise InvalidRequestError(f"{param}: {message}", param=param)


def _finite(value: float, param: str) -> None:
    _check(
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value),
        param,
        "must be a finite number",
    )


@dataclass
class SamplingParams:
    """How to pick tokens and when to stop. `temperature=0` means greedy."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: disabled
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    max_tokens: int = 16
    min_tokens: int = 0
    ignore_eos: bool = False
    logprobs: int | None = None  # number of top alternatives to return per token
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    # Requests share cached KV blocks only with requests of the same salt (None: with every
    # request without one). Not a sampling knob; it travels here with the request.
    cache_salt: str | None = None
    logit_bias: dict[int, float] | None = None  # added to the token's logit before sampling
    grammar: Grammar | None = None  # structured output: the tokens the grammar allows
    # A reply that continues one begun elsewhere (a router resuming a stream whose replica
    # died): these are its first output tokens, counted in max_tokens and the usage, and a
    # seeded generator starts as far along as they took it.
    continue_token_ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop)
        self.stop_token_ids = list(self.stop_token_ids)
        self.continue_token_ids = list(self.continue_token_ids)
        self._validate()

    def _validate(self) -> None:
        _check(type(self.n) is int and 1 <= self.n <= MAX_N, "n", f"must be in [1, {MAX_N}]")
        for name in ("temperature", "top_p", "min_p", "repetition_penalty"):
            _finite(getattr(self, name), name)
        for name in ("presence_penalty", "frequency_penalty"):
            _finite(getattr(self, name), name)
            _check(-2.0 <= getattr(self, name) <= 2.0, name, "must be in [-2, 2]")
        _check(self.temperature >= 0, "temperature", "must be >= 0")
        _check(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        _check(0 <= self.min_p <= 1, "min_p", "must be in [0, 1]")
        _check(self.repetition_penalty > 0, "repetition_penalty", "must be > 0")
        _check(type(self.top_k) is int and self.top_k >= -1, "top_k", "must be -1, 0 or positive")
        _check(type(self.max_tokens) is int and self.max_tokens >= 1, "max_tokens", "must be >= 1")
        _check(
            type(self.min_tokens) is int and 0 <= self.min_tokens <= self.max_tokens,
            "min_tokens",
            "must be in [0, max_tokens]",
        )
        _check(
            self.seed is None or (type(self.seed) is int and 0 <= self.seed < 2**63),
            "seed",
            "must be a non-negative 64-bit integer",
        )
        _check(len(self.stop) <= MAX_STOP_STRINGS, "stop", f"at most {MAX_STOP_STRINGS} strings")
        _check(
            all(isinstance(s, str) and s for s in self.stop), "stop", "must be non-empty strings"
        )
        _check(
            all(type(t) is int and t >= 0 for t in self.stop_token_ids),
            "stop_token_ids",
            "must be non-negative integers",
        )
        _check(
            self.logprobs is None
            or (type(self.logprobs) is int and 0 <= self.logprobs <= MAX_LOGPROBS),
            "logprobs",
            f"must be in [0, {MAX_LOGPROBS}]",
        )
        _check(
            all(type(t) is int and t >= 0 for t in self.continue_token_ids),
            "continue_token_ids",
            "must be non-negative integers",
        )
        if self.continue_token_ids:
            _check(self.n == 1, "continue_token_ids", "continue one choice at a time (n = 1)")
            _check(
                len(self.continue_token_ids) < self.max_tokens,
                "continue_token_ids",
                "must leave room for max_tokens to generate more",
            )
        bias = self.logit_bias or {}
        _check(len(bias) <= MAX_LOGIT_BIAS, "logit_bias", f"at most {MAX_LOGIT_BIAS} tokens")
        for token_id, value in bias.items():
            _check(type(token_id) is int and token_id >= 0, "logit_bias", "keys are token ids")
            _finite(value, "logit_bias")
            _check(-100 <= value <= 100, "logit_bias", "values must be in [-100, 100]")

    def verify_for_model(self, vocab_size: int) -> None:
        """Checks that need the model: token ids must exist in its vocabulary."""
        bad = [t for t in self.stop_token_ids if t >= vocab_size]
        _check(not bad, "stop_token_ids", f"unknown token ids {bad} (vocab size {vocab_size})")
        bad = [t for t in self.logit_bias or {} if t >= vocab_size]
        _check(not bad, "logit_bias", f"unknown token ids {bad} (vocab size {vocab_size})")
        bad = [t for t in self.continue_token_ids if t >= vocab_size]
        _check(not bad, "continue_token_ids", f"unknown token ids {bad} (vocab size {vocab_size})")

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def needs_penalties(self) -> bool:
        return (
            self.repetition_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        )

    @property
    def needs_truncation(self) -> bool:
        return self.top_p < 1.0 or self.top_k > 0 or self.min_p > 0.0
