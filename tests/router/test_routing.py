"""Policies on real replicas: cache_aware raises the replicas' own prefix-cache hit rate over
round robin, and still spreads a hot prefix once the load threshold trips."""

from __future__ import annotations

import concurrent.futures
import json

import httpx

from chatfleet.entrypoints.cli import main
from tests.router.conftest import MODEL, REPLICA_HEADER, prefix_cache_counts, router_metric


def bench_hit_rate(replicas, router, tmp_path, seed: int) -> tuple[float, dict]:
    """Run `chatfleet bench` (shared-prefix) through the router; the replicas' hit rate."""
    hits0, queries0 = prefix_cache_counts(replicas)
    out = tmp_path / f"bench-{seed}.json"
    args = ["bench", "--base-url", router.base_url, "--dataset", "shared-prefix"]
    args += ["--num-groups", "12", "--num-prompts", "36", "--prefix-len", "150"]
    args += ["--input-len", "12", "--max-tokens", "2", "--concurrency", "2", "--seed", str(seed)]
    assert main([*args, "--no-progress", "--output", str(out)]) == 0
    summary = json.loads(out.read_text())["summary"]
    assert summary["num_failed"] == 0
    hits1, queries1 = prefix_cache_counts(replicas)
    return (hits1 - hits0) / (queries1 - queries0), summary


def test_cache_aware_hit_rate_beats_round_robin(replicas, router_factory, tmp_path):
    # 12 groups of 3 requests sharing a ~200-token system prompt, over 3 replicas. Different
    # seeds (so different prefixes) per policy: neither run finds the other's blocks cached.
    # Expected: cache_aware misses once per group (2/3 of prefix tokens hit); round robin
    # hits only when a group's requests happen to land on the same replica (about 0.3).
    rates = {}
    for policy, seed in (("round_robin", 11), ("cache_aware", 12)):
        router = router_factory(replicas, "--policy", policy)
        rates[policy], _ = bench_hit_rate(replicas, router, tmp_path, seed)
        router.stop()
    print(f"prefix-cache hit rates: {rates}")
    assert rates["cache_aware"] > 0.5
    assert rates["cache_aware"] >= 1.5 * rates["round_robin"]


def _stream(url: str, messages: list[dict], max_tokens: int) -> tuple[str, str]:
    body = {"model": MODEL, "messages": messages, "max_tokens": max_tokens, "stream": True}
    body["ignore_eos"] = True
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and '"error"' not in "".join(lines)
    return r.headers[REPLICA_HEADER], lines[-2]


def test_hot_prefix_spreads_once_the_imbalance_threshold_trips(replicas, router_factory):
    router = router_factory(
        replicas,
        "--policy",
        "cache_aware",
        "--balance-abs-threshold",
        "1",
        "--balance-rel-threshold",
        "1",
    )
    hot = [{"role": "system", "content": "You are the ship's log. " * 40}]

    def ask(i: int, max_tokens: int) -> str:
        question = {"role": "user", "content": f"Entry {i}: what happened today?"}
        return _stream(router.base_url, [*hot, question], max_tokens)[0]

    # One at a time, load stays balanced: every request follows the cached prefix.
    sequential = [ask(i, 2) for i in range(4)]
    assert len(set(sequential)) == 1
    # Nine at once: the prefix holder's load passes the threshold, others take requests.
    with concurrent.futures.ThreadPoolExecutor(9) as pool:
        burst = list(pool.map(lambda i: ask(i, 48), range(10, 19)))
    assert len(set(burst)) >= 2, burst
    decisions = httpx.get(f"{router.base_url}/metrics", timeout=10).text
    assert 'reason="imbalance"' in decisions
    assert router_metric(router, "chatfleet_router_prefix_hit_blocks_total") > 0
