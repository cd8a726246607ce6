"""Frozen gateway settings, one dataclass per component that reads them."""

from __future__ import annotations

from dataclasses import dataclass, field

from chatfleet.config.flags import format_bytes, parse_bytes, setting
from chatfleet.config.http_config import HttpLimitsConfig

DEFAULT_DB = "sqlite:///.chatfleet/gateway.db"


@dataclass(frozen=True)
class UpstreamConfig:
    """Where replies come from: any OpenAI-compatible base URL (a router or one replica)."""

    url: str = field(
        default="http://127.0.0.1:8002",
        metadata=setting("upstream", "OpenAI-compatible base URL (a router or one replica)"),
    )
    # Sent upstream as Bearer; callers' keys never are.
    api_key: str | None = field(default=None, repr=False, metadata=setting("upstream_api_key"))
    model: str | None = field(
        default=None, metadata=setting("upstream_model", "model name sent upstream")
    )
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

    backend: str = field(
        default="memory",
        metadata=setting("limits", "memory (one process) or redis://HOST:PORT/DB (shared)"),
    )
    default_rpm: int = 120
    default_tpm: int = 200_000
    default_max_streams: int = field(default=4, metadata=setting("max_streams_per_key"))
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
    max_model_len: int | None = field(
        default=None, metadata=setting(help="default: the upstream's /v1/models max_model_len")
    )
    # When history must be trimmed, trim this many tokens more than needed: the kept prefix then
    # stays the same for the next turns, so the replica's prefix cache keeps hitting.
    trim_slack_tokens: int = 512
    max_message_chars: int = 100_000
    title_chars: int = 60
    # What one user's conversations may hold in all (system prompts and message texts);
    # past it, a new conversation or message is a 413.
    max_stored_bytes_per_user: int = field(
        default=64 << 20, metadata=setting(parse=parse_bytes, format=format_bytes)
    )
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
    db_url: str = field(
        default=DEFAULT_DB, metadata=setting("db", "sqlite:///PATH or postgresql://...")
    )
    tokenizer: str | None = field(
        default=None,
        metadata=setting(
            help="model file whose chat template counts prompt tokens (default: the default "
            "model), or 'chars' to estimate from characters"
        ),
    )
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig, metadata=setting("upstream_"))
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    chat: ChatConfig = field(default_factory=ChatConfig)
    max_body_bytes: int = field(
        default=4 << 20, metadata=setting(parse=parse_bytes, format=format_bytes)
    )
    max_json_depth: int = 64
    http: HttpLimitsConfig = field(default_factory=HttpLimitsConfig, metadata=setting("http_"))
    # "user": each user's prompts share cached KV blocks only with that user's (a tenant
    # cannot probe another's prompts through cached_tokens); "shared": every prompt with
    # every other (more hits on a system prompt all users share, when nothing in it is secret).
    cache_isolation: str = field(default="user", metadata=setting(choices=("user", "shared")))

    def __post_init__(self) -> None:
        if self.cache_isolation not in ("user", "shared"):
            raise ValueError("cache_isolation must be 'user' or 'shared'")
