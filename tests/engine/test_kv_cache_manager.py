"""Block pool and KV cache manager: prefix hits, reference counts, LRU eviction (no model)."""

from __future__ import annotations

from chatfleet.engine.kv_cache_manager import KVCacheManager
from chatfleet.engine.request import Request
from chatfleet.sampling_params import SamplingParams


def _req(rid: str, tokens: list[int]) -> Request:
    return Request(rid, tokens, SamplingParams(max_tokens=4))


def _admit(kv: KVCacheManager, req: Request) -> list[int] | None:
    hits, num = kv.get_computed_blocks(req)
    ids = kv.allocate_slots(req, req.num_tokens - num, hits, num)
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


def test_unfilled_last_block_is_adopted_by_one_continuation():
    """A finished request's last, unfilled block (the tail of a chat turn) serves the next
    request that continues its tokens, exclusively; a divergent one does not match it."""
    kv = KVCacheManager(num_blocks=10, block_size=4)
    a = _req("a", list(range(10)))  # 2 full blocks + 2 tokens in a third
    ids_a = _admit(kv, a)
    kv.free(a)
    kv.check_integrity()
    divergent = _req("d", list(range(9)) + [77, 78])
    hits, num = kv.get_computed_blocks(divergent)
    assert num == 8 and len(hits) == 2
    b = _req("b", list(range(10)) + [50, 51, 52])
    hits, num = kv.get_computed_blocks(b)
    assert num == 10 and [h.block_id for h in hits] == ids_a
    ids_b = kv.allocate_slots(b, b.num_tokens - num, hits, num)
    assert ids_b is not None and ids_b[:3] == ids_a
    assert kv.stats.hits == 10
    kv.check_integrity()
    c = _req("c", list(range(10)) + [60])  # b owns the partial block now
    assert kv.get_computed_blocks(c)[1] == 8
    # b's block 2 fills up with b's own tokens and becomes a shared full block.
    b.num_computed_tokens = b.num_tokens
    kv.free(b)
    assert kv.get_computed_blocks(_req("e", list(range(10)) + [50, 51, 99]))[1] == 12
    kv.check_integrity()


def test_partial_block_leaves_the_index_when_evicted():
    kv = KVCacheManager(num_blocks=3, block_size=4)
    a = _req("a", list(range(6)))
    _admit(kv, a)
    kv.free(a)
    _admit(kv, _req("x", [90 + i for i in range(12)]))  # takes all three blocks
    kv.check_integrity()
    assert kv.get_computed_blocks(_req("b", list(range(6)) + [1]))[1] == 0
