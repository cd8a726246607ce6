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
import dataclasses
import logging
import os
import shlex
from typing import Any

from chatfleet.config import flags
from chatfleet.config.router_config import AutoscaleConfig, LocalReplicaConfig, RouterConfig
from chatfleet.config.server_config import ServeConfig
from chatfleet.entrypoints.access import add_access_args, api_key_from, check_exposure
from chatfleet.entrypoints.parsing import add_command
from chatfleet.entrypoints.ray_up_cmd import add_ray_args, cmd_up_ray
from chatfleet.processes import taken_ports

logger = logging.getLogger("chatfleet.up")
_SCALE = "scale_"  # autoscaling flags: --scale-up-queue-len, ...


def add_router_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8002)
    p.add_argument("--shutdown-timeout", type=float, default=30.0)
    flags.add_flags(p, RouterConfig)
    add_access_args(p)


def router_config(args: argparse.Namespace, what: str) -> RouterConfig:
    """The router's settings and key; ConfigError if it would listen beyond loopback
    without one."""
    config = dataclasses.replace(flags.from_args(RouterConfig, args), api_key=api_key_from(args))
    check_exposure(args.host, config.api_key, what)
    return config


def cmd_router(args: argparse.Namespace) -> int:
    from chatfleet.http.uvicorn_server import UvicornServer, setup_logging
    from chatfleet.router.forwarder import Router
    from chatfleet.router.router_app import build_router_app

    setup_logging()
    if not args.replica:
        print("error: give at least one --replica URL", flush=True)
        return 2
    config = router_config(args, "chatfleet router")
    router = Router(config, args.replica)
    app = build_router_app(router)
    server = UvicornServer(app, args.host, args.port, args.shutdown_timeout, limits=config.http)
    asyncio.run(server.serve())
    return 0


def add_up_args(p: argparse.ArgumentParser) -> None:
    add_router_args(p)
    p.add_argument("--replicas", type=int, default=2, help="replicas to start with")
    flags.add_flags(p, AutoscaleConfig, prefix=_SCALE)
    flags.add_flags(p, LocalReplicaConfig, skip=("host",))
    p.add_argument(
        "--replica-threads",
        type=int,
        default=None,
        help="threads per replica (default: CPUs / max replicas, at least 1)",
    )
    p.add_argument(
        "--replica-args",
        default="",
        help="`chatfleet serve` flags for every replica, e.g. '--kv-cache-memory 1GiB'",
    )
    add_ray_args(p)  # --backend ray and its flags


def replica_config(
    args: argparse.Namespace, default_threads: int, api_key: str | None
) -> ServeConfig:
    """Every replica's settings: the --replica-args flags, with --replica-threads; the
    replicas demand the router's key (the router sends it)."""
    from chatfleet.entrypoints.serve_cmd import add_serve_args

    parser = argparse.ArgumentParser(prog="--replica-args", add_help=False, exit_on_error=False)
    add_serve_args(parser)
    try:
        replica_args = parser.parse_args(shlex.split(args.replica_args))
    except (argparse.ArgumentError, SystemExit) as e:
        raise flags.ConfigError(f"--replica-args: {e}") from None
    config = flags.from_args(ServeConfig, replica_args)
    config = dataclasses.replace(config, server=dataclasses.replace(config.server, api_key=api_key))
    # NOTE: --num-threads inside --replica-args wins over --replica-threads and the default.
    if replica_args.num_threads is not None:
        return config
    threads = args.replica_threads or default_threads
    engine = dataclasses.replace(config.engine, num_threads=threads)
    return dataclasses.replace(config, engine=engine)


def autoscale_config(args: argparse.Namespace) -> AutoscaleConfig:
    lo = args.min_replicas if args.min_replicas is not None else args.replicas
    hi = args.max_replicas if args.max_replicas is not None else max(args.replicas, lo)
    try:
        base = AutoscaleConfig(min_replicas=lo, max_replicas=hi)
    except ValueError as e:
        raise flags.ConfigError(f"--replicas / --min-replicas / --max-replicas: {e}") from None
    return flags.from_args(AutoscaleConfig, args, prefix=_SCALE, base=base)


def cmd_up(args: argparse.Namespace) -> int:
    from chatfleet.http.uvicorn_server import UvicornServer, setup_logging
    from chatfleet.router.autoscale import Autoscaler
    from chatfleet.router.forwarder import Router
    from chatfleet.router.local_replica_manager import LocalReplicaManager
    from chatfleet.router.router_app import build_router_app

    setup_logging()
    config = router_config(args, "chatfleet up")
    scale = autoscale_config(args)
    if args.backend == "ray":
        replica = replica_config(args, max(1, int(args.replica_cpus)), config.api_key)
        return cmd_up_ray(args, config, replica, scale)
    if taken := taken_ports(args.host, [args.port]):
        raise flags.ConfigError(f"port {taken[0]} on {args.host} is already in use")
    cpus = os.cpu_count() or 1
    replica = replica_config(args, max(1, cpus // scale.max_replicas), config.api_key)
    local = flags.from_args(LocalReplicaConfig, args, base=LocalReplicaConfig(host=args.host))
    num_start = min(max(args.replicas, scale.min_replicas), scale.max_replicas)
    manager = LocalReplicaManager(local, replica)
    router = Router(config)
    app = build_router_app(router, manager)
    server = UvicornServer(app, args.host, args.port, args.shutdown_timeout, limits=config.http)

    async def main() -> None:
        scaler_task = None
        try:
            for _ in range(num_start):
                router.pool.add((await manager.start()).url)
            if scale.max_replicas > scale.min_replicas:
                scaler_task = asyncio.create_task(Autoscaler(router, manager, scale).run())
            logger.info("router on http://%s:%d over %d replicas", args.host, args.port, num_start)
            await server.serve()
        finally:
            if scaler_task is not None:
                scaler_task.cancel()
            await manager.close()

    asyncio.run(main())
    return 0


def register(sub: Any) -> None:
    about = "OpenAI-compatible router over running replicas"
    router = add_command(sub, "router", about, add_router_args, cmd_router)
    router.add_argument("--replica", action="append", default=[], help="replica base URL")
    about = "start N replicas and a router in front of them"
    add_command(sub, "up", about, add_up_args, cmd_up)
