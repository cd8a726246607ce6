"""The OpenAI server's settings, and what one replica (`chatfleet serve`) runs."""

from __future__ import annotations

from dataclasses import dataclass, field

from chatfleet.config.engine_config import EngineConfig
from chatfleet.config.flags import format_bytes, parse_bytes, setting
from chatfleet.modelfile.paths import DEFAULT_MODEL_NAME


@dataclass(frozen=True)
class ServerConfig:
    model_names: tuple[str, ...] = field(
        default=(DEFAULT_MODEL_NAME,),
        metadata=setting("served_model_name", "the names /v1/models lists and requests use"),
    )
    api_key: str | None = field(default=None, metadata=setting(help="required as Bearer"))
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


@dataclass(frozen=True)
class ServeConfig:
    """One replica: its engine and its server (`chatfleet serve`'s flags)."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
