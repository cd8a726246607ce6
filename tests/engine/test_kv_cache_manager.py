"""Block pool and KV cache manager: prefix hits, reference counts, LRU eviction (no model)."""

from __future__ import annotations

from chatfleet.engine.kv_cache_manager import KVCacheManager
from chatfleet.engine.request import Request
from chatfleet.sampling_params import SamplingParams


def _req(rid: str, tokens: list[int]) -> Request:
    return Request(rid, tokens, SamplingParams(max_tokens=4))


def _admit(kv: KVCacheManager, req: Request) -> list[int] | None:
    hits, num = kv.get_computed_blocks(req)
    ids = kv.allocate_slots(req, req.num_tokens - num, hits)
    if ids is not None:
        req.num_computed_tokens = req.num_tokens
    return ids


def test_shared_prefix_reuses_blocks_and_counts_hits():
    kv = KVCacheManager(num_blocks=10, block_size=4)
    a = _req("a", list(range(10)))  # 2 full blocks + 2 tokens
    b = _req("b", list(range(8)) + [99, 98, 97])
    ids_a = _admit(kv, a)
    ids_b = _admit(kv, b)
    assert ids_a[:2] == ids_b[:2] and ids_a[2] != ids_b[2]
    assert kv.stats.hits == 8 and kv.stats.queries == 21
    kv.check_integrity()
    assert kv.pool.blocks[ids_a[0]].ref_count == 2


def test_full_hit_still_leaves_one_token_to_compute():
    kv = KVCacheManager(num_blocks=10, block_size=4)
    a = _req("a", list(range(8)))
    _admit(kv, a)
    kv.free(a)
    b = _req("b", list(range(8)))
    hits, num = kv.get_computed_blocks(b)
    assert num == 4 and len(hits) == 1  # the last block is recomputed for its logits


def test_freed_blocks_stay_cached_until_evicted_lru():
    kv = KVCacheManager(num_blocks=4, block_size=2)
    a = _req("a", [1, 2, 3, 4, 5])
    _admit(kv, a)
    kv.free(a)
    assert kv.pool.num_free_blocks == 4
    # Reviving: a new request with the same prefix hits both full blocks.
    hits, num = kv.get_computed_blocks(_req("b", [1, 2, 3, 4, 9]))
    assert num == 4
    # Filling the pool with other tokens evicts them.
    c = _req("c", [7, 7, 8, 8, 6, 6, 5])
    assert _admit(kv, c) is not None
    hits, num = kv.get_computed_blocks(_req("d", [1, 2, 3, 4, 9]))
    assert num == 0
    kv.check_integrity()


def test_allocation_failure_is_none_and_changes_nothing():
    kv = KVCacheManager(num_blocks=2, block_size=4)
    big = _req("big", list(range(12)))
    assert _admit(kv, big) is None
    assert kv.pool.num_free_blocks == 2
    kv.check_integrity()


def test_hash_collision_is_verified_by_tokens():
    kv = KVCacheManager(num_blocks=4, block_size=2)
    a = _req("a", [1, 2, 3])
    _admit(kv, a)
    block = kv.pool.blocks[kv.get_block_ids("a")[0]]
    # Pretend another token sequence hashed to the same value: lookup must refuse it.
    assert kv.pool.lookup(block.block_hash, None, (5, 6)) is None
    assert kv.pool.lookup(block.block_hash, None, (1, 2)) is block
