"""The Serve application: EngineReplica deployment + Ingress deployment, from RayDeployConfig.

deploy(config): ray.init(address) -> serve.start (HTTP proxy on the head node only)
                -> serve.run(Ingress.bind(EngineReplica.bind(engine_config), ...))
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
from typing import Any

import ray
from ray import serve
from ray.serve.config import RequestRouterConfig

from chatfleet.config.deploy_config import RayDeployConfig, load_file
from chatfleet.ray_serve.ingress import FleetLimits, Ingress
from chatfleet.ray_serve.ray_engine_client import RetryConfig
from chatfleet.ray_serve.replica import EngineReplica
from chatfleet.ray_serve.request_router import ChatfleetRequestRouter

ENGINE_DEPLOYMENT = "EngineReplica"
INGRESS_DEPLOYMENT = "Ingress"


def _version(config: RayDeployConfig, part: str) -> str:
    """Serve's code version of a deployment: the same while only the replica count changes.

    NOTE: serve.run gives a deployment a random version by default, which restarts every
    replica on each redeploy; RayReplicaManager redeploys to add or remove one replica, and
    must leave the others running (a "lightweight" config update in Serve's terms).
    The key is left out of a config's repr, so it goes into the hash on its own: a new key
    must restart the replicas that check it, and the version shown must not reveal it.
    """
    stable = dataclasses.replace(config, num_replicas=1, min_replicas=None, max_replicas=None)
    code = importlib.metadata.version("chatfleet")
    key = config.replica.server.api_key or ""
    return hashlib.sha256(f"{part}:{code}:{stable!r}:{key}".encode()).hexdigest()[:16]


def build_application(config: RayDeployConfig, num_replicas: int | None = None) -> Any:
    """The bound application; `num_replicas` overrides the fixed count (manager start/stop)."""
    engine_config, server_config = config.replica.engine, config.replica.server
    max_num_seqs = engine_config.scheduler.max_num_seqs
    router: dict[str, Any] = {
        "request_routing_stats_period_s": config.routing_stats_period_s,
        "request_routing_stats_timeout_s": max(5.0, 5 * config.routing_stats_period_s),
    }
    if config.request_router == "chatfleet":
        router["request_router_class"] = ChatfleetRequestRouter
        router["request_router_kwargs"] = {
            "policy": dataclasses.asdict(config.policy),
            "prefix": dataclasses.asdict(config.prefix),
        }
    autoscaling = config.autoscaling_config()
    count: dict[str, Any] = (
        {"autoscaling_config": autoscaling}
        if autoscaling is not None
        else {"num_replicas": num_replicas or config.num_replicas}
    )
    replica = serve.deployment(name=ENGINE_DEPLOYMENT)(EngineReplica).options(
        **count,
        max_ongoing_requests=max_num_seqs + server_config.max_queue_len,
        ray_actor_options={
            "num_cpus": config.replica_cpus,
            "num_gpus": config.replica_gpus,
            "resources": dict(config.replica_resources),
        },
        request_router_config=RequestRouterConfig(**router),
        graceful_shutdown_wait_loop_s=0.5,
        graceful_shutdown_timeout_s=config.shutdown_timeout_s,
        health_check_period_s=2.0,
        version=_version(config, ENGINE_DEPLOYMENT),
        _internal=True,
    )
    # The ingress admits for the whole fleet: each replica's running + queue limits, times
    # the most replicas there can be.
    _, max_n = config.bounds
    fleet = dataclasses.replace(server_config, max_queue_len=server_config.max_queue_len * max_n)
    limits = FleetLimits(max_num_seqs * max_n, engine_config.model)
    ingress = serve.deployment(name=INGRESS_DEPLOYMENT)(serve.ingress()(Ingress)).options(
        num_replicas=1,
        max_ongoing_requests=limits.max_num_seqs + fleet.max_queue_len,
        ray_actor_options={"num_cpus": 0, "resources": dict(config.ingress_resources)},
        version=_version(config, INGRESS_DEPLOYMENT),
        _internal=True,
    )
    retry = RetryConfig(config.max_attempts, config.retry_deadline_s)
    return ingress.bind(replica.bind(engine_config), limits, fleet, retry, config.session_header)


def connect(config: RayDeployConfig) -> None:
    """Join the Ray cluster (or start a local one) and start Serve's HTTP proxy."""
    if not ray.is_initialized():
        ray.init(address=config.address, namespace="chatfleet", log_to_driver=False)
    serve.start(proxy_location="HeadOnly", http_options={"host": config.host, "port": config.port})


def deploy(config: RayDeployConfig, num_replicas: int | None = None) -> None:
    """Deploy (or update in place) the application; returns once it is running."""
    connect(config)
    serve.run(build_application(config, num_replicas), name=config.app_name, route_prefix="/")


def app_builder(args: dict[str, Any]) -> Any:
    """The application for Serve's own tooling (`serve run`, `serve deploy`, KubeRay's
    RayService): import path `chatfleet.ray_serve.app:app_builder`, args either
    `{config: deploy.yaml}` or the deploy.yaml settings inline (inline ones win)."""
    values = load_file(args["config"]) if "config" in args else {}
    values.update({k: v for k, v in args.items() if k != "config"})
    return build_application(RayDeployConfig().with_overrides(values))
