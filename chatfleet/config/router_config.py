"""Frozen router settings, one dataclass per component that reads them."""

from __future__ import annotations

from dataclasses import dataclass, field

from chatfleet.config.flags import format_bytes, parse_bytes, setting
from chatfleet.config.http_config import HttpLimitsConfig

POLICY_NAMES = ("cache_aware", "least_loaded", "round_robin", "session")


@dataclass(frozen=True)
class PolicyConfig:
    """Knobs of the routing policies (see policies.py)."""

    name: str = field(default="cache_aware", metadata=setting("policy", choices=POLICY_NAMES))
    # cache_aware leaves a replica holding the prefix when its load exceeds the least loaded
    # replica's by more than `balance_abs_threshold` AND is above `balance_rel_threshold` times it.
    balance_abs_threshold: float = field(
        default=8.0,
        metadata=setting(
            help="cache_aware: leave a prefix holder whose load exceeds the least loaded's by this"
        ),
    )
    balance_rel_threshold: float = field(
        default=1.5,
        metadata=setting(help="cache_aware: ... and is this many times the least loaded's"),
    )
    # A prefix match shorter than this fraction of the prompt's blocks is ignored, so a short
    # system prompt that every request shares does not pin all traffic to one replica.
    min_match_ratio: float = field(
        default=0.25,
        metadata=setting(
            help="cache_aware: ignore prefix matches under this fraction of the prompt"
        ),
    )
    session_vnodes: int = 100  # points per replica on the session policy's hash ring

    def __post_init__(self) -> None:
        if self.name not in POLICY_NAMES:
            raise ValueError(f"unknown policy {self.name!r}; choose from {list(POLICY_NAMES)}")
        if self.balance_abs_threshold < 0 or self.balance_rel_threshold < 1:
            raise ValueError("balance thresholds: abs >= 0 and rel >= 1")
        if not 0.0 <= self.min_match_ratio <= 1.0:
            raise ValueError("min_match_ratio must be in [0, 1]")
        if self.session_vnodes < 1:
            raise ValueError("session_vnodes must be positive")


@dataclass(frozen=True)
class PrefixConfig:
    """The router-side prefix index: which replica was sent which prompt prefix."""

    # Prompt text is hashed in blocks of this many characters.
    block_chars: int = field(default=64, metadata=setting("prefix_block_chars"))
    # Longer prompts are indexed by their first blocks only.
    max_blocks_per_request: int = field(default=512, metadata=setting("prefix_request_blocks"))
    # Per replica, an LRU bound on remembered blocks: 8192 blocks of 64 characters is ~130k
    # tokens, above what a 2 GiB KV cache of the default model holds.
    max_blocks_per_replica: int = field(
        default=8192,
        metadata=setting("prefix_index_blocks", "prompt blocks remembered per replica (LRU)"),
    )

    def __post_init__(self) -> None:
        if min(self.block_chars, self.max_blocks_per_request, self.max_blocks_per_replica) < 1:
            raise ValueError("prefix index sizes must be positive")


@dataclass(frozen=True)
class HealthConfig:
    """Active probing and passive outlier ejection."""

    probe_interval_s: float = 1.0
    probe_timeout_s: float = 2.0
    max_failures: int = field(
        default=3,
        metadata=setting(help="consecutive failures (probes or requests) before ejection"),
    )
    cooldown_s: float = field(
        default=5.0,
        metadata=setting("eject_cooldown", "ejected this long; then one good probe re-admits"),
    )

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
    # A stream's replica must send a token (not just keep-alives) this often, the first
    # counted from the request: past it the replica is hung (its engine stuck, or the whole
    # process), is ejected, and the stream ends with an error event (or, before its headers,
    # goes to another replica). Non-streamed requests have read_timeout_s; any request also
    # stops waiting once probes eject its replica (Router.until).
    token_timeout_s: float = field(
        default=120.0, metadata=setting(help="longest wait for a stream's next token")
    )
    max_body_bytes: int = field(
        default=4 << 20, metadata=setting(parse=parse_bytes, format=format_bytes)
    )
    # A stream whose replica fails mid-way continues on another replica this many times
    # (router/relay.py); 0: it ends with an error event, as with every other proxy.
    max_resumptions: int = field(
        default=3, metadata=setting(help="times a stream may move to another replica mid-way")
    )
    max_connections: int = 4096
    session_header: str = field(default="x-session-id", metadata=setting(parse=str.lower))

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or min(self.retry_deadline_s, self.token_timeout_s) <= 0:
            raise ValueError("max_attempts, retry_deadline_s and token_timeout_s must be positive")


@dataclass(frozen=True)
class RouterConfig:
    # Required from clients as Bearer on /v1/*, /metrics and /router/replicas, and sent to
    # the replicas (which demand the same key). From the environment or a file, not a flag
    # (entrypoints/keys.py): a flag shows in `ps`.
    api_key: str | None = field(default=None, repr=False, metadata=setting(hidden=True))
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    prefix: PrefixConfig = field(default_factory=PrefixConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    http: HttpLimitsConfig = field(default_factory=HttpLimitsConfig, metadata=setting("http_"))


@dataclass(frozen=True)
class AutoscaleConfig:
    """Replica counts and thresholds of `chatfleet up`'s autoscaler (router/autoscale.py)."""

    min_replicas: int = field(
        metadata=setting("min_replicas", "autoscaling floor (default: --replicas)")
    )
    max_replicas: int = field(
        metadata=setting("max_replicas", "autoscaling ceiling (default: the floor or --replicas)")
    )
    interval_s: float = 2.0
    # Mean requests waiting per replica above which to add one...
    up_queue_len: float = 2.0
    up_kv_usage: float = 0.85  # ...or mean KV usage above which to add one
    # Remove one when, with one replica fewer, the fleet would still be idle: nothing
    # waiting, KV usage and in-flight per remaining replica below these.
    down_kv_usage: float = 0.3
    down_in_flight: float = 1.0
    up_after_s: float = 10.0
    down_after_s: float = 60.0
    cooldown_s: float = 30.0
    drain_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ValueError("need 1 <= min_replicas <= max_replicas")
        if self.down_kv_usage >= self.up_kv_usage:
            raise ValueError("down_kv_usage must be below up_kv_usage (hysteresis)")


@dataclass(frozen=True)
class LocalReplicaConfig:
    """How `chatfleet up` runs its replicas as local `chatfleet serve` processes."""

    host: str = "127.0.0.1"
    port_start: int = field(
        default=8100, metadata=setting("replica_port_start", "replicas take free ports from here")
    )
    log_dir: str | None = field(
        default=None, metadata=setting(help="one log file per replica (default: inherit)")
    )
    restart_backoff_s: float = 1.0
    max_restart_backoff_s: float = 30.0
    stable_after_s: float = 60.0
