"""Server-only settings (engine settings live in chatfleet.config)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServerConfig:
    model_names: tuple[str, ...] = ("SmolLM2-135M-Instruct",)
    api_key: str | None = None
    max_num_seqs: int = 128  # the engine's running limit: in flight beyond it means queueing
    max_queue_len: int = 256  # requests allowed to wait beyond max_num_seqs, else 503
    request_timeout_s: float = 600.0
    shutdown_timeout_s: float = 30.0
    max_body_bytes: int = 4 << 20
    max_json_depth: int = 64
    disconnect_poll_s: float = 0.1
    health_max_stall_s: float = 30.0
