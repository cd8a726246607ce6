"""cache_aware vs round_robin routing over local replicas: prefix-cache hit rate and TTFT.

For each workload and policy, `chatfleet up --replicas N --policy P` starts fresh replicas
(empty caches) behind the router, one `chatfleet bench` run plays the same seeded workload
through it, and the hit rate is read from the replicas' own counters
(vllm:prefix_cache_hits / vllm:prefix_cache_queries, in prompt tokens), not from the router.

  shared-prefix  16 groups x 4 requests sharing a 600-word (~600-token) system prompt, C=4.
                 Each replica's KV cache (--kv-budget 160MiB: ~7,000 tokens) holds about 11
                 of the 16 prefixes, so round robin also loses some to eviction.
  multi-turn     ShareGPT conversations replayed turn by turn with their history, C=4.

    .venv/bin/python benchmarks/router_policies.py --output docs/results/router_policies.json

Nothing else should run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from local_fleet import BIN, get_json, start_up

POLICIES = ("round_robin", "cache_aware")
WORKLOADS = {
    "shared-prefix": shlex.split(
        "--dataset shared-prefix --num-groups 16 --num-prompts 64 --prefix-len 600 "
        "--input-len 32 --output-len 16 --max-tokens 16 --concurrency 4"
    ),
    "multi-turn": shlex.split(
        "--dataset multi-turn --num-prompts 24 --num-turns 3 --max-tokens 64 --concurrency 4"
    ),
}


def _metric_sums(url: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        text = r.read().decode()
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = line.split("{", 1)[0].split(" ", 1)[0]
            sums[name] = sums.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return sums


def run_one(
    args: argparse.Namespace, workload: str, policy: str, out_dir: Path, log_dir: Path
) -> dict:
    replica_args = f"--kv-cache-memory {args.kv_budget} --max-num-seqs 16"
    log_path = log_dir / f"up-{workload}-{policy}.log"
    proc, url = start_up(args.replicas, policy, replica_args, log_path)
    try:
        replica_urls = [r["url"] for r in get_json(f"{url}/router/replicas")["replicas"]]
        bench_json = out_dir / f"bench-{workload}-{policy}.json"
        cmd = [str(BIN / "chatfleet"), "bench", "--base-url", url, *WORKLOADS[workload]]
        cmd += ["--seed", str(args.seed), "--no-progress", "--output", str(bench_json)]
        cmd += ["--label", f"{workload} {policy}"]
        subprocess.run(cmd, check=True)
        per_replica = []
        for r in replica_urls:
            m = _metric_sums(r)
            hits, queries = m["vllm:prefix_cache_hits_total"], m["vllm:prefix_cache_queries_total"]
            per_replica.append({"url": r, "hits": hits, "queries": queries})
        router = _metric_sums(url)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
    summary = json.loads(bench_json.read_text())["summary"]
    hits = sum(r["hits"] for r in per_replica)
    queries = sum(r["queries"] for r in per_replica)
    estimate_q = router.get("chatfleet_router_prefix_query_blocks_total", 0.0)
    estimate_h = router.get("chatfleet_router_prefix_hit_blocks_total", 0.0)
    return {
        "workload": workload,
        "policy": policy,
        "hit_rate": hits / queries if queries else None,
        "prefix_cache_hits": hits,
        "prefix_cache_queries": queries,
        "per_replica": per_replica,
        "router_hit_estimate": estimate_h / estimate_q if estimate_q else None,
        "ttft_ms": summary["ttft_ms"],
        "e2e_ms": summary["e2e_ms"],
        "request_throughput": summary["request_throughput"],
        "output_token_throughput": summary["output_token_throughput"],
        "num_requests": summary["num_requests"],
        "num_failed": summary["num_failed"],
        "bench_json": bench_json.name,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--output", default="docs/results/router_policies.json")
    p.add_argument("--replicas", type=int, default=4)
    p.add_argument("--kv-budget", default="160MiB", help="KV cache memory per replica")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    args = p.parse_args()
    output = Path(args.output)
    out_dir = output.with_suffix("")
    out_dir.mkdir(parents=True, exist_ok=True)
    log_dir = Path(tempfile.mkdtemp(prefix="router_policies-"))
    print(f"logs in {log_dir}", flush=True)
    runs = []
    for workload in args.workloads.split(","):
        for policy in POLICIES:
            run = run_one(args, workload, policy, out_dir, log_dir)
            runs.append(run)
            print(
                f"{workload:14s} {policy:12s} hit rate {run['hit_rate']:.3f}  "
                f"TTFT mean {run['ttft_ms']['mean']:.0f} ms p90 {run['ttft_ms']['p90']:.0f} ms  "
                f"failed {run['num_failed']}",
                flush=True,
            )
    config = {k: v for k, v in vars(args).items()}
    config["workload_args"] = {w: WORKLOADS[w] for w in args.workloads.split(",")}
    output.write_text(json.dumps({"config": config, "runs": runs}, indent=2) + "\n")
    print(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
