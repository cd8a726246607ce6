"""cache_aware inside Ray (ChatfleetRequestRouter) vs Serve's power-of-two router: the
replicas' own prefix-cache counters on a shared-prefix workload."""

from __future__ import annotations

from benchmarks.ray_routing import play

# 12 prefixes of ~300 words (~400 tokens), interleaved: one replica's 64 MiB cache (~2,800
# tokens) holds about half, so spreading each prefix over both replicas evicts, keeping them
# apart does not.
WORKLOAD = (
    "--dataset shared-prefix --num-groups 12 --num-prompts 48 --prefix-len 300 "
    "--input-len 16 --output-len 4 --max-tokens 4 --concurrency 2"
)


def test_cache_aware_beats_power_of_two_on_shared_prefixes(fleet_factory, tmp_path):
    rates = {}
    for router in ("chatfleet", "power_of_two"):
        fleet = fleet_factory(num_replicas=2, request_router=router)  # fresh replicas
        result = play(fleet.url, fleet.manager, WORKLOAD, 0, tmp_path / f"{router}.json")
        assert result["num_failed"] == 0
        rates[router] = result["hit_rate"]
    print(f"prefix-cache hit rate: {rates}")
    assert rates["chatfleet"] > 1.3 * rates["power_of_two"], rates
