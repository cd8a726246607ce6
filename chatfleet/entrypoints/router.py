"""`chatfleet router` (a router over running replicas) and `chatfleet up` (replicas + router).

`up` starts N `chatfleet serve` processes on local ports and the router in front of them,
restarts a replica that exits, and with --min-replicas/--max-replicas adds or drains replicas
from queue depth and KV usage. SIGTERM or Ctrl-C stops the router, then every replica
(each drains first). `up --backend ray` deploys the same engine, policies and routes on a
Ray Serve cluster instead (chatfleet/ray_serve).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex

from chatfleet.entrypoints.http import setup_logging, uvicorn_server
from chatfleet.ray_serve.cli import add_ray_args, cmd_up_ray
from chatfleet.router.config import (
    HealthConfig,
    PolicyConfig,
    PrefixConfig,
    ProxyConfig,
    RouterConfig,
)
from chatfleet.router.policies import POLICIES

logger = logging.getLogger("chatfleet.up")


def add_router_args(p: argparse.ArgumentParser) -> None:
    d_policy, d_prefix, d_health, d_proxy = (
        PolicyConfig(),
        PrefixConfig(),
        HealthConfig(),
        ProxyConfig(),
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8002)
    p.add_argument("--policy", choices=sorted(POLICIES), default=d_policy.name)
    p.add_argument(
        "--balance-abs-threshold",
        type=float,
        default=d_policy.balance_abs_threshold,
        help="cache_aware: leave a prefix holder whose load exceeds the least loaded's by this",
    )
    p.add_argument(
        "--balance-rel-threshold",
        type=float,
        default=d_policy.balance_rel_threshold,
        help="cache_aware: ... and is this many times the least loaded's",
    )
    p.add_argument(
        "--min-match-ratio",
        type=float,
        default=d_policy.min_match_ratio,
        help="cache_aware: ignore prefix matches under this fraction of the prompt",
    )
    p.add_argument("--session-header", default=d_proxy.session_header)
    p.add_argument("--prefix-block-chars", type=int, default=d_prefix.block_chars)
    p.add_argument(
        "--prefix-index-blocks",
        type=int,
        default=d_prefix.max_blocks_per_replica,
        help="prompt blocks remembered per replica (LRU)",
    )
    p.add_argument("--probe-interval", type=float, default=d_health.probe_interval_s)
    p.add_argument("--probe-timeout", type=float, default=d_health.probe_timeout_s)
    p.add_argument("--max-failures", type=int, default=d_health.max_failures)
    p.add_argument("--eject-cooldown", type=float, default=d_health.cooldown_s)
    p.add_argument("--max-attempts", type=int, default=d_proxy.max_attempts)
    p.add_argument("--retry-deadline", type=float, default=d_proxy.retry_deadline_s)
    p.add_argument("--connect-timeout", type=float, default=d_proxy.connect_timeout_s)
    p.add_argument("--read-timeout", type=float, default=d_proxy.read_timeout_s)
    p.add_argument("--shutdown-timeout", type=float, default=30.0)


def router_config(args: argparse.Namespace) -> RouterConfig:
    return RouterConfig(
        policy=PolicyConfig(
            name=args.policy,
            balance_abs_threshold=args.balance_abs_threshold,
            balance_rel_threshold=args.balance_rel_threshold,
            min_match_ratio=args.min_match_ratio,
        ),
        prefix=PrefixConfig(
            block_chars=args.prefix_block_chars,
            max_blocks_per_replica=args.prefix_index_blocks,
        ),
        health=HealthConfig(
            probe_interval_s=args.probe_interval,
            probe_timeout_s=args.probe_timeout,
            max_failures=args.max_failures,
            cooldown_s=args.eject_cooldown,
        ),
        proxy=ProxyConfig(
            max_attempts=args.max_attempts,
            retry_deadline_s=args.retry_deadline,
            connect_timeout_s=args.connect_timeout,
            read_timeout_s=args.read_timeout,
            session_header=args.session_header.lower(),
        ),
    )


def cmd_router(args: argparse.Namespace) -> int:
    from chatfleet.router.app import build_router_app
    from chatfleet.router.proxy import Router

    setup_logging()
    if not args.replica:
        print("error: give at least one --replica URL", flush=True)
        return 2
    router = Router(router_config(args), args.replica)
    server = uvicorn_server(build_router_app(router), args.host, args.port, args.shutdown_timeout)
    asyncio.run(server.serve())
    return 0


def add_up_args(p: argparse.ArgumentParser) -> None:
    add_router_args(p)
    p.add_argument("--replicas", type=int, default=2, help="replicas to start with")
    p.add_argument("--min-replicas", type=int, default=None, help="autoscaling floor")
    p.add_argument("--max-replicas", type=int, default=None, help="autoscaling ceiling")
    p.add_argument("--replica-port-start", type=int, default=8100)
    p.add_argument(
        "--replica-threads",
        type=int,
        default=None,
        help="threads per replica (default: CPUs / max replicas, at least 1)",
    )
    p.add_argument(
        "--replica-args",
        default="",
        help="extra `chatfleet serve` flags, e.g. '--kv-cache-memory 1GiB'",
    )
    p.add_argument("--log-dir", default=None, help="one log file per replica (default: inherit)")
    p.add_argument("--scale-interval", type=float, default=2.0)
    p.add_argument("--scale-up-queue-len", type=float, default=2.0)
    p.add_argument("--scale-up-kv-usage", type=float, default=0.85)
    p.add_argument("--scale-down-kv-usage", type=float, default=0.3)
    p.add_argument("--scale-down-in-flight", type=float, default=1.0)
    p.add_argument("--scale-up-after", type=float, default=10.0)
    p.add_argument("--scale-down-after", type=float, default=60.0)
    p.add_argument("--scale-cooldown", type=float, default=30.0)
    add_ray_args(p)  # --backend ray and its flags


def cmd_up(args: argparse.Namespace) -> int:
    from chatfleet.router.app import build_router_app
    from chatfleet.router.autoscale import AutoscaleConfig, Autoscaler
    from chatfleet.router.local import LocalReplicaConfig, LocalReplicaManager
    from chatfleet.router.proxy import Router

    setup_logging()
    if args.backend == "ray":
        return cmd_up_ray(args, router_config(args))
    min_n = args.min_replicas if args.min_replicas is not None else args.replicas
    max_n = args.max_replicas if args.max_replicas is not None else max(args.replicas, min_n)
    try:
        scale = AutoscaleConfig(
            min_replicas=min_n,
            max_replicas=max_n,
            interval_s=args.scale_interval,
            up_queue_len=args.scale_up_queue_len,
            up_kv_usage=args.scale_up_kv_usage,
            down_kv_usage=args.scale_down_kv_usage,
            down_in_flight=args.scale_down_in_flight,
            up_after_s=args.scale_up_after,
            down_after_s=args.scale_down_after,
            cooldown_s=args.scale_cooldown,
        )
    except ValueError as e:
        print(f"error: {e}", flush=True)
        return 2
    num_start = min(max(args.replicas, min_n), max_n)
    threads = args.replica_threads or max(1, (os.cpu_count() or 1) // max_n)
    serve_args = ("--num-threads", str(threads), *shlex.split(args.replica_args))
    manager = LocalReplicaManager(
        LocalReplicaConfig(args.host, args.replica_port_start, serve_args, args.log_dir)
    )
    router = Router(router_config(args))
    server = uvicorn_server(
        build_router_app(router, manager), args.host, args.port, args.shutdown_timeout
    )

    async def main() -> None:
        scaler_task = None
        try:
            for _ in range(num_start):
                router.pool.add((await manager.start()).url)
            if max_n > min_n:
                scaler_task = asyncio.create_task(Autoscaler(router, manager, scale).run())
            logger.info("router on http://%s:%d over %d replicas", args.host, args.port, num_start)
            await server.serve()
        finally:
            if scaler_task is not None:
                scaler_task.cancel()
            await manager.close()

    asyncio.run(main())
    return 0
