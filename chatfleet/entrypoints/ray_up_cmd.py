"""`chatfleet up --backend ray`: deploy on a Ray cluster, then wait for Ctrl-C / SIGTERM.

No Ray import at module level: `chatfleet up` (local) must work without Ray installed.
"""

from __future__ import annotations

import argparse
import signal
import threading

from chatfleet.config.deploy_config import RayDeployConfig, load_file
from chatfleet.config.router_config import AutoscaleConfig, RouterConfig
from chatfleet.config.server_config import ServeConfig
from chatfleet.entrypoints.access import check_exposure
from chatfleet.extras import require


def add_ray_args(p: argparse.ArgumentParser) -> None:
    d = RayDeployConfig()
    p.add_argument("--backend", choices=["local", "ray"], default="local")
    p.add_argument("--ray-address", default=None, help="ray: cluster address (default: local)")
    p.add_argument("--replica-cpus", type=float, default=d.replica_cpus, help="ray: per replica")
    p.add_argument("--replica-gpus", type=float, default=d.replica_gpus, help="ray: per replica")
    p.add_argument(
        "--target-ongoing-requests",
        type=float,
        default=d.target_ongoing_requests,
        help="ray: autoscaling target per replica",
    )
    p.add_argument("--config", default=None, help="ray: deploy.yaml (see docs/deploy.md)")


def ray_config(
    args: argparse.Namespace, router: RouterConfig, replica: ServeConfig, scale: AutoscaleConfig
) -> RayDeployConfig:
    """Flags first, then the --config file's settings over them."""
    config = RayDeployConfig(
        address=args.ray_address,
        host=args.host,
        port=args.port,
        num_replicas=args.replicas,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        target_ongoing_requests=args.target_ongoing_requests,
        upscale_delay_s=scale.up_after_s,
        downscale_delay_s=scale.down_after_s,
        replica_cpus=args.replica_cpus,
        replica_gpus=args.replica_gpus,
        replica=replica,
        policy=router.policy,
        prefix=router.prefix,
        session_header=router.proxy.session_header,
        max_attempts=router.proxy.max_attempts,
        retry_deadline_s=router.proxy.retry_deadline_s,
        shutdown_timeout_s=args.shutdown_timeout,
    )
    return config.with_overrides(load_file(args.config)) if args.config else config


def cmd_up_ray(
    args: argparse.Namespace, router: RouterConfig, replica: ServeConfig, scale: AutoscaleConfig
) -> int:
    require("ray", "ray", "`chatfleet up --backend ray`")
    from ray import serve

    from chatfleet.ray_serve.app import deploy

    try:
        config = ray_config(args, router, replica, scale)
        # NOTE: on the final host: a deploy.yaml's `host:` overrides --host.
        check_exposure(config.host, config.replica.server.api_key, "chatfleet up --backend ray")
    except (ValueError, KeyError, TypeError) as e:
        print(f"error: {e}", flush=True)
        return 2
    deploy(config)
    print(f"chatfleet on Ray Serve at http://{config.host}:{config.port}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    serve.delete(config.app_name)  # every replica drains first
    return 0
