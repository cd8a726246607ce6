"""A fixed pool of KV blocks with a free LRU list and a prefix-hash table.

A block is in exactly one of two states:
    ref_count > 0   used by running requests (never evictable)
    ref_count == 0  on the free list; if it still has a hash it is a cached prefix block that
                    a later request may revive, and it is evicted lazily when popped for reuse.

A free block may also be a *partial* block: the last, unfilled block of a finished request,
indexed by its parent's hash and the tokens it holds. A later request whose next tokens start
with those adopts it whole (never shared: it goes on writing its own tokens after them), which
saves recomputing the tail of a previous chat turn (~half a block per turn on average).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(eq=False)
class KVCacheBlock:
    block_id: int
    ref_count: int = 0
    block_hash: int | None = None
    # For verification on a hash hit: the parent's hash and this block's token ids.
    parent_hash: int | None = None
    token_ids: tuple[int, ...] = ()
    is_partial: bool = False  # indexed in BlockPool._partials (then block_hash is None)


def hash_block(
    parent_hash: int | None, token_ids: tuple[int, ...], extra_key: object = None
) -> int:
    """Chained hash of a full block: equal hashes imply equal prefixes (up to collisions)."""
    return hash((parent_hash, token_ids, extra_key))


class BlockPool:
    """Owns every KVCacheBlock. Mutates ref counts, the free list and the hash table."""

    def __init__(self, num_blocks: int, enable_caching: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError("the KV cache needs at least one block")
        self.blocks = [KVCacheBlock(i) for i in range(num_blocks)]
        self.enable_caching = enable_caching
        # OrderedDict gives O(1) removal from the middle (a cache hit) and O(1) LRU pop.
        self._free: OrderedDict[int, KVCacheBlock] = OrderedDict(
            (b.block_id, b) for b in self.blocks
        )
        self._cached: dict[int, KVCacheBlock] = {}
        # parent hash -> partial blocks (by id) continuing that prefix
        self._partials: dict[int | None, dict[int, KVCacheBlock]] = {}

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def usage(self) -> float:
        return 1.0 - len(self._free) / len(self.blocks)

    def lookup(self, block_hash: int, parent_hash: int | None, token_ids: tuple[int, ...]):
        """The cached block for this hash, or None. Verifies tokens to rule out collisions."""
        block = self._cached.get(block_hash)
        if block is None or block.parent_hash != parent_hash or block.token_ids != token_ids:
            return None
        return block

    def lookup_partial(
        self, parent_hash: int | None, next_tokens: tuple[int, ...]
    ) -> KVCacheBlock | None:
        """The partial block after `parent_hash` holding the longest prefix of next_tokens."""
        fits = [
            b
            for b in self._partials.get(parent_hash, {}).values()
            if next_tokens[: len(b.token_ids)] == b.token_ids
        ]
        return max(fits, key=lambda b: len(b.token_ids), default=None)

    def touch(self, blocks: list[KVCacheBlock]) -> None:
        """Take a reference on (possibly free) cached blocks; removes them from the free list.
        A partial block leaves the index: its new owner writes past its cached tokens."""
        for block in blocks:
            if block.ref_count == 0:
                del self._free[block.block_id]
            if block.is_partial:
                self._evict(block)
            block.ref_count += 1

    def allocate(self, num_blocks: int) -> list[KVCacheBlock]:
        """Pop LRU free blocks, evicting their cached hashes. Caller checks availability."""
        assert num_blocks <= len(self._free), "allocate() beyond the free list"
        out = []
        for _ in range(num_blocks):
            _, block = self._free.popitem(last=False)
            self._evict(block)
            block.ref_count = 1
            out.append(block)
        return out

    def free(self, blocks: list[KVCacheBlock]) -> None:
        """Drop one reference each; blocks reaching zero go to the tail (most recent) end.

        Callers pass blocks in reverse order so a request's tail blocks, the least likely to
        be shared, are evicted before its head blocks.
        """
        for block in blocks:
            block.ref_count -= 1
            assert block.ref_count >= 0, "double free"
            if block.ref_count == 0:
                self._free[block.block_id] = block

    def cache_block(
        self,
        block: KVCacheBlock,
        block_hash: int,
        parent_hash: int | None,
        token_ids: tuple[int, ...],
    ) -> None:
        """Register a full block under its chained hash (first writer wins)."""
        if not self.enable_caching or block.block_hash is not None:
            return
        block.block_hash, block.parent_hash, block.token_ids = block_hash, parent_hash, token_ids
        self._cached.setdefault(block_hash, block)

    def cache_partial(
        self, block: KVCacheBlock, parent_hash: int | None, token_ids: tuple[int, ...]
    ) -> None:
        """Index a request's unfilled last block (exclusively owned, about to be freed) by the
        tokens whose KV it holds."""
        # NOTE: only an exclusively owned, unhashed block: a shared one is someone's prefix.
        if not self.enable_caching or block.block_hash is not None or block.ref_count != 1:
            return
        if not token_ids:
            return
        block.parent_hash, block.token_ids, block.is_partial = parent_hash, token_ids, True
        self._partials.setdefault(parent_hash, {})[block.block_id] = block

    def _evict(self, block: KVCacheBlock) -> None:
        if block.is_partial:
            siblings = self._partials[block.parent_hash]
            del siblings[block.block_id]
            if not siblings:
                del self._partials[block.parent_hash]
            block.parent_hash, block.token_ids, block.is_partial = None, (), False
        if block.block_hash is not None:
            if self._cached.get(block.block_hash) is block:
                del self._cached[block.block_hash]
            block.block_hash, block.parent_hash, block.token_ids = None, None, ()

    def reset_prefix_cache(self) -> None:
        for block in self._free.values():
            self._evict(block)

    def check_integrity(self) -> None:
        """Raises AssertionError if the free list, ref counts and hash table disagree."""
        for block in self.blocks:
            on_free = block.block_id in self._free
            assert on_free == (block.ref_count == 0), f"block {block.block_id} free-list mismatch"
        for h, block in self._cached.items():
            assert block.block_hash == h, "hash table points at a re-hashed block"
        for parent, siblings in self._partials.items():
            for block in siblings.values():
                assert block.is_partial and block.parent_hash == parent, "stale partial index"
                assert block.ref_count == 0 and block.block_hash is None, "owned partial block"
