"""Ray Serve routing: chatfleet's cache_aware request router vs Serve's default power-of-two.

For each router, two engine replicas are deployed fresh (empty caches) on a local Ray
instance, one `chatfleet bench` run plays the same seeded shared-prefix workload through the
Serve ingress, and the prefix-cache hit rate is read from the replicas' own counters
(prefix_cache_hits / prefix_cache_queries in prompt tokens, via RayReplicaManager.stats).

  shared-prefix  12 groups x 4 requests sharing a 400-word system prompt, C=4, interleaved.
                 Each replica's KV cache (--kv-budget 64MiB: ~2,800 tokens) holds about half
                 of the prefixes, so a router that spreads a prefix over both replicas loses
                 some to eviction as well as to first visits.

    .venv/bin/python benchmarks/ray_routing.py --output docs/results/ray_routing.json

Nothing else should run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
ROUTERS = ("chatfleet", "power_of_two")
WORKLOAD = (
    "--dataset shared-prefix --num-groups 12 --num-prompts 48 --prefix-len 400 "
    "--input-len 32 --output-len 8 --max-tokens 8 --concurrency 4"
)


def hit_rate(stats: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Totals over the replicas' own prefix-cache counters."""
    hits = sum(s["prefix_cache_hits"] for s in stats.values())
    queries = sum(s["prefix_cache_queries"] for s in stats.values())
    return {
        "hit_rate": hits / queries if queries else None,
        "prefix_cache_hits": hits,
        "prefix_cache_queries": queries,
        "per_replica": stats,
    }


def play(url: str, manager: Any, workload: str, seed: int, output: Path) -> dict[str, Any]:
    """One `chatfleet bench` run through the ingress, then the replicas' hit rate."""
    cmd = [str(BIN / "chatfleet"), "bench", "--base-url", url, *shlex.split(workload)]
    cmd += ["--seed", str(seed), "--no-progress", "--output", str(output)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    summary = json.loads(output.read_text())["summary"]
    return {
        **hit_rate(asyncio.run(manager.stats())),
        "num_requests": summary["num_requests"],
        "num_failed": summary["num_failed"],
        "ttft_ms": summary["ttft_ms"],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--output", default="docs/results/ray_routing.json")
    p.add_argument("--kv-budget", default="64MiB", help="KV cache memory per replica")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import ray
    from ray import serve

    from chatfleet.config.deploy_config import RayDeployConfig
    from chatfleet.config.flags import from_mapping
    from chatfleet.config.server_config import ServeConfig
    from chatfleet.ray_serve.app import deploy
    from chatfleet.ray_serve.ray_replica_manager import RayReplicaManager

    # NOTE: a throwaway local instance on 127.0.0.1; left unset, ray.init() turns token auth
    # on and writes ~/.ray/auth_token, which later `ray start` clusters then half-adopt.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=4, include_dashboard=False, object_store_memory=10**8)
    settings = {"num_threads": 1, "kv_cache_memory": args.kv_budget, "max_num_seqs": 16}
    replica = from_mapping(ServeConfig, settings)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for router in ROUTERS:
            config = RayDeployConfig(
                port=18765,
                num_replicas=2,
                request_router=router,
                replica=replica,
            )
            started = time.monotonic()
            deploy(config)
            print(f"{router}: deployed in {time.monotonic() - started:.0f} s", flush=True)
            url = f"http://{config.host}:{config.port}"
            manager = RayReplicaManager(config)
            result = play(url, manager, WORKLOAD, args.seed, Path(tmp) / f"{router}.json")
            runs.append({"router": router, **result})
            print(f"{router}: hit rate {result['hit_rate']:.3f}", flush=True)
            serve.delete(config.app_name)
    serve.shutdown()
    ray.shutdown()
    out = {"workload": WORKLOAD, "replicas": 2, "replica": settings, "runs": runs}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(out, indent=2) + "\n")
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
