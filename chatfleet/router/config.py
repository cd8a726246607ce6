"""Frozen router settings, one dataclass per component that reads them."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PolicyConfig:
    """Knobs of the routing policies (see policies.py)."""

    name: str = "cache_aware"
    # cache_aware leaves a replica holding the prefix when its load exceeds the least loaded
    # replica's by more than `balance_abs_threshold` AND is above `balance_rel_threshold` times it.
    balance_abs_threshold: float = 8.0
    balance_rel_threshold: float = 1.5
    # A prefix match shorter than this fraction of the prompt's blocks is ignored, so a short
    # system prompt that every request shares does not pin all traffic to one replica.
    min_match_ratio: float = 0.25
    session_vnodes: int = 100  # points per replica on the session policy's hash ring

    def __post_init__(self) -> None:
        if self.balance_abs_threshold < 0 or self.balance_rel_threshold < 1:
            raise ValueError("balance thresholds: abs >= 0 and rel >= 1")
        if not 0.0 <= self.min_match_ratio <= 1.0:
            raise ValueError("min_match_ratio must be in [0, 1]")
        if self.session_vnodes < 1:
            raise ValueError("session_vnodes must be positive")


@dataclass(frozen=True)
class PrefixConfig:
    """The router-side prefix index: which replica was sent which prompt prefix."""

    block_chars: int = 64  # prompt text is hashed in blocks of this many characters
    max_blocks_per_request: int = 512  # longer prompts are indexed by their first blocks only
    # Per replica, an LRU bound on remembered blocks: 8192 blocks of 64 characters is ~130k
    # tokens, above what a 2 GiB KV cache of the default model holds.
    max_blocks_per_replica: int = 8192

    def __post_init__(self) -> None:
        if min(self.block_chars, self.max_blocks_per_request, self.max_blocks_per_replica) < 1:
            raise ValueError("prefix index sizes must be positive")


@dataclass(frozen=True)
class HealthConfig:
    """Active probing and passive outlier ejection."""

    probe_interval_s: float = 1.0
    probe_timeout_s: float = 2.0
    max_failures: int = 3  # consecutive failures (probes or proxied requests) before ejection
    cooldown_s: float = 5.0  # ejected this long; then one good probe re-admits

    def __post_init__(self) -> None:
        if self.probe_interval_s <= 0 or self.probe_timeout_s <= 0 or self.cooldown_s < 0:
            raise ValueError("probe interval/timeout must be positive, cooldown non-negative")
        if self.max_failures < 1:
            raise ValueError("max_failures must be positive")


@dataclass(frozen=True)
class ProxyConfig:
    """Forwarding: retries before the first byte, timeouts, limits."""

    max_attempts: int = 3  # replicas tried per request, at most
    retry_deadline_s: float = 30.0  # no new attempt starts after this long
    connect_timeout_s: float = 2.0
    read_timeout_s: float = 600.0  # longest silence from a replica (first byte included)
    max_body_bytes: int = 4 << 20
    max_connections: int = 4096
    session_header: str = "x-session-id"

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.retry_deadline_s <= 0:
            raise ValueError("max_attempts and retry_deadline_s must be positive")


@dataclass(frozen=True)
class RouterConfig:
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    prefix: PrefixConfig = field(default_factory=PrefixConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
