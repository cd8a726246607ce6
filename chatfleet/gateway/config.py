"""Frozen gateway settings, one dataclass per component that reads them."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class UpstreamConfig:
    """Where replies come from: any OpenAI-compatible base URL (a router or one replica)."""

    url: str = "http://127.0.0.1:8002"
    api_key: str | None = None  # sent upstream as Bearer; callers' keys never are
    model: str | None = None  # None: the upstream's default model
    # The router's session policy reads this header (or the body's `user`); the gateway sends
    # the conversation id in both, so a conversation stays on the replica holding its KV cache.
    session_header: str = "x-session-id"
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"upstream URL must be http(s)://..., got {self.url!r}")
        if self.connect_timeout_s <= 0 or self.read_timeout_s <= 0:
            raise ValueError("upstream timeouts must be positive")


@dataclass(frozen=True)
class LimitsConfig:
    """Per-key limits; a key's own rpm/tpm/max_streams override these defaults."""

    backend: str = "memory"  # "memory" (one process) or a redis://host:port/db URL (shared)
    default_rpm: int = 120
    default_tpm: int = 200_000
    default_max_streams: int = 4
    # A stream's slot is a lease renewed while it runs, so a gateway killed mid-stream does
    # not hold its slots for ever (they lapse after this long).
    stream_lease_s: float = 60.0

    def __post_init__(self) -> None:
        if min(self.default_rpm, self.default_tpm, self.default_max_streams) < 1:
            raise ValueError("default limits must be positive")
        if self.stream_lease_s <= 0:
            raise ValueError("stream_lease_s must be positive")


@dataclass(frozen=True)
class ChatConfig:
    """Conversations: reply size, context trimming, how replies are recorded."""

    reply_max_tokens: int = 512  # default and cap of a reply's max_tokens
    default_temperature: float = 0.7
    max_model_len: int | None = None  # None: the upstream's /v1/models `max_model_len`
    # When history must be trimmed, trim this many tokens more than needed: the kept prefix then
    # stays the same for the next turns, so the replica's prefix cache keeps hitting.
    trim_slack_tokens: int = 512
    max_message_chars: int = 100_000
    title_chars: int = 60
    flush_interval_s: float = 0.5  # partial reply text is written this often
    # A reply still "streaming" whose row was not touched for this long belongs to a gateway
    # that died: it is reported and then stored as "incomplete".
    stale_after_s: float = 10.0

    def __post_init__(self) -> None:
        if self.reply_max_tokens < 1 or self.trim_slack_tokens < 0:
            raise ValueError("reply_max_tokens must be positive, trim_slack_tokens >= 0")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError("max_model_len must be at least 2")
        if self.flush_interval_s <= 0 or self.stale_after_s <= self.flush_interval_s:
            raise ValueError("need 0 < flush_interval_s < stale_after_s")


@dataclass(frozen=True)
class GatewayConfig:
    db_url: str = "sqlite:///chatfleet-gateway.db"
    tokenizer: str | None = None  # model file for the chat template; None: the default model
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    chat: ChatConfig = field(default_factory=ChatConfig)
    max_body_bytes: int = 4 << 20
    max_json_depth: int = 64
