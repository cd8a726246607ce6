"""The OpenAI server's settings, and what one replica (`chatfleet serve`) runs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from chatfleet.config.engine_config import EngineConfig
from chatfleet.config.flags import format_bytes, parse_bytes, setting
from chatfleet.config.http_config import HttpLimitsConfig
from chatfleet.modelfile.paths import served_model_name

# Where `chatfleet serve` and `chatfleet router` look for their API key when no flag or file
# names one; the replica supervisor hands replicas their key through it.
API_KEY_ENV = "CHATFLEET_API_KEY"


@dataclass(frozen=True)
class ServerConfig:
    model_names: tuple[str, ...] | None = field(
        default=None,
        metadata=setting(
            "served_model_name",
            "the names /v1/models lists and requests use (default: from the model file's name)",
        ),
    )
    api_key: str | None = field(
        default=None,
        repr=False,  # a config's repr is logged and hashed into Serve's deployment version
        metadata=setting(
            help="required as Bearer; shows in `ps` (prefer --api-key-file or the environment)"
        ),
    )
    # In flight beyond the engine's running limit (max_num_seqs) means queueing; past this
    # many waiting, requests are refused with 503.
    max_queue_len: int = field(
        default=256, metadata=setting(help="requests allowed to wait beyond max_num_seqs")
    )
    request_timeout_s: float = 600.0
    shutdown_timeout_s: float = field(
        default=30.0, metadata=setting(help="SIGTERM: how long in-flight requests may finish")
    )
    max_body_bytes: int = field(
        default=4 << 20, metadata=setting(parse=parse_bytes, format=format_bytes)
    )
    max_json_depth: int = 64
    health_max_stall_s: float = 30.0
    keep_alive_s: float = field(
        default=15.0,
        metadata=setting(help="a stream silent this long gets an SSE comment (proxies cut it)"),
    )
    http: HttpLimitsConfig = field(default_factory=HttpLimitsConfig, metadata=setting("http_"))

    def for_model(self, model: str | None) -> ServerConfig:
        """This config with its names set: the given ones, else the model's own name."""
        if self.model_names is not None:
            return self
        return dataclasses.replace(self, model_names=(served_model_name(model),))

    @property
    def names(self) -> tuple[str, ...]:
        assert self.model_names, "resolved by for_model() before the server starts"
        return self.model_names

    def __post_init__(self) -> None:
        if self.model_names is not None and (not self.model_names or not all(self.model_names)):
            raise ValueError("served_model_name: give at least one non-empty name")
        if min(self.request_timeout_s, self.keep_alive_s, self.health_max_stall_s) <= 0:
            raise ValueError("request_timeout, keep_alive and health_max_stall must be positive")
        if self.max_queue_len < 0 or self.shutdown_timeout_s < 0:
            raise ValueError("max_queue_len and shutdown_timeout must be >= 0")
        if self.max_body_bytes < 1 or self.max_json_depth < 1:
            raise ValueError("max_body_bytes and max_json_depth must be positive")


@dataclass(frozen=True)
class ServeConfig:
    """One replica: its engine and its server (`chatfleet serve`'s flags)."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
