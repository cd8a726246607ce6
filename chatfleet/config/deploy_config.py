"""RayDeployConfig: one frozen description of a chatfleet deployment on Ray Serve.

Built from `chatfleet up --backend ray` flags, then overridden by `--config deploy.yaml`
(keys are the field names below; `policy:` and `prefix:` hold PolicyConfig / PrefixConfig
fields, `replica:` the settings of `chatfleet serve`, named as its flags are). See
docs/deploy.md for an example file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from chatfleet.config import flags
from chatfleet.config.router_config import PolicyConfig, PrefixConfig
from chatfleet.config.server_config import ServeConfig
from chatfleet.extras import require


@dataclass(frozen=True)
class RayDeployConfig:
    address: str | None = None  # Ray cluster ("auto", "host:6379"); None starts a local Ray
    app_name: str = "chatfleet"
    host: str = "127.0.0.1"  # Serve's HTTP proxy (on the head node only)
    port: int = 8002
    num_replicas: int = 2  # without autoscaling; the starting count with it
    min_replicas: int | None = None  # autoscaling when max_replicas > min_replicas
    max_replicas: int | None = None
    target_ongoing_requests: float = 4.0  # per replica; Serve scales to keep near it
    upscale_delay_s: float = 10.0
    downscale_delay_s: float = 60.0
    replica_cpus: float = 1.0
    replica_gpus: float = 0.0
    replica_resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources
    ingress_resources: dict[str, float] = field(default_factory=dict)
    replica: ServeConfig = field(default_factory=ServeConfig)  # every replica's engine + server
    # "chatfleet" (ChatfleetRequestRouter running `policy`) or "power_of_two" (Serve's own
    # default router, kept for comparison: benchmarks/ray_routing.py).
    request_router: str = "chatfleet"
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    prefix: PrefixConfig = field(default_factory=PrefixConfig)
    session_header: str = "x-session-id"
    routing_stats_period_s: float = 1.0
    max_attempts: int = 3
    retry_deadline_s: float = 30.0
    shutdown_timeout_s: float = 30.0  # a removed replica drains this long at most

    def __post_init__(self) -> None:
        lo, hi = self.bounds
        if not 1 <= lo <= hi:
            raise ValueError("need 1 <= min_replicas <= max_replicas")
        if self.request_router not in ("chatfleet", "power_of_two"):
            raise ValueError("request_router must be 'chatfleet' or 'power_of_two'")
        if self.replica_cpus < 0 or self.replica_gpus < 0 or self.target_ongoing_requests <= 0:
            raise ValueError("replica resources must be >= 0, target_ongoing_requests > 0")

    @property
    def bounds(self) -> tuple[int, int]:
        lo = self.min_replicas if self.min_replicas is not None else self.num_replicas
        hi = self.max_replicas if self.max_replicas is not None else max(self.num_replicas, lo)
        return lo, hi

    @property
    def is_autoscaling(self) -> bool:
        lo, hi = self.bounds
        return hi > lo

    def autoscaling_config(self) -> dict[str, Any] | None:
        """Ray Serve's autoscaling_config, or None for a fixed count."""
        if not self.is_autoscaling:
            return None
        lo, hi = self.bounds
        return {
            "min_replicas": lo,
            "max_replicas": hi,
            "initial_replicas": min(max(self.num_replicas, lo), hi),
            "target_ongoing_requests": self.target_ongoing_requests,
            "upscale_delay_s": self.upscale_delay_s,
            "downscale_delay_s": self.downscale_delay_s,
            # Load averaged over 12 s: Ray wants the window longer than its metrics interval
            # (10 s; setting the interval is deprecated in favour of environment variables).
            "look_back_period_s": 12.0,
        }

    def with_overrides(self, values: dict[str, Any]) -> RayDeployConfig:
        """A copy with `values` (e.g. a parsed YAML file) applied; KeyError for unknown keys."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = set(values) - names
        if "replica_args" in unknown:
            raise KeyError(
                "replica_args is now a mapping, `replica:`, keyed by `chatfleet serve`'s "
                "settings, e.g. replica: {kv_cache_memory: 4GiB, max_num_seqs: 64}"
            )
        if unknown:
            raise KeyError(f"unknown deploy settings: {sorted(unknown)}")
        changes = dict(values)
        if "policy" in changes:
            changes["policy"] = dataclasses.replace(self.policy, **changes["policy"])
        if "prefix" in changes:
            changes["prefix"] = dataclasses.replace(self.prefix, **changes["prefix"])
        if "replica" in changes:
            changes["replica"] = flags.from_mapping(
                ServeConfig, changes["replica"], base=self.replica
            )
        return dataclasses.replace(self, **changes)


def load_file(path: str) -> dict[str, Any]:
    """A deploy.yaml as a dict."""
    yaml = require("yaml", "ray", "a deploy.yaml")

    with open(path) as f:
        values = yaml.safe_load(f) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of settings")
    return {k.replace("-", "_"): v for k, v in values.items()}
