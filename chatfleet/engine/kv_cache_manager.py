"""Per-request KV block bookkeeping on top of the BlockPool, with automatic prefix caching.

Token positions map onto a request's blocks like this (block_size 4):
    tokens:  t0 t1 t2 t3 | t4 t5 t6 t7 | t8 t9
    blocks:  [   b7     ] [    b2     ] [ b9 ...   ]   <- block table of the request
    slot of token i = block_table[i // block_size] * block_size + i % block_size
Only full blocks are hashed, so only full blocks are ever shared. A finished request's last,
unfilled block is kept as a partial block (see block_pool) for one later request to adopt.
"""

from __future__ import annotations

from dataclasses import dataclass

from chatfleet.engine.block_pool import BlockPool, KVCacheBlock, hash_block
from chatfleet.engine.request import Request


@dataclass
class PrefixCacheStats:
    """Counted per admitted request, in tokens (vLLM's prefix_cache_queries/hits)."""

    queries: int = 0
    hits: int = 0


class KVCacheManager:
    """Maps requests to blocks. Failure to allocate is a return value (None), not an error."""

    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = True) -> None:
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.pool = BlockPool(num_blocks, enable_caching)
        self.stats = PrefixCacheStats()
        self._blocks: dict[str, list[KVCacheBlock]] = {}
        self._num_hashed: dict[str, int] = {}  # full blocks already registered, per request

    @property
    def usage(self) -> float:
        return self.pool.usage()

    def get_block_ids(self, request_id: str) -> list[int]:
        return [b.block_id for b in self._blocks.get(request_id, ())]

    def _update_hashes(self, request: Request, num_tokens: int) -> None:
        """Extend request.block_hashes to cover every full block of its first num_tokens."""
        bs, hashes, tokens = self.block_size, request.block_hashes, request.token_ids
        for i in range(len(hashes), num_tokens // bs):
            parent = hashes[-1] if hashes else _root(request)
            hashes.append(hash_block(parent, tuple(tokens[i * bs : (i + 1) * bs])))

    def get_computed_blocks(self, request: Request) -> tuple[list[KVCacheBlock], int]:
        """Longest cached prefix of a waiting request: (blocks, number of tokens they hold).

        Full blocks first, then possibly one partial block continuing them. At least one token
        is always left to compute, since its logits are needed. Mutates nothing but
        request.block_hashes.
        """
        if not self.enable_caching:
            return [], 0
        self._update_hashes(request, request.num_tokens)
        bs, tokens = self.block_size, request.token_ids
        hits: list[KVCacheBlock] = []
        parent = _root(request)
        for i in range((request.num_tokens - 1) // bs):
            block_hash = request.block_hashes[i]
            block = self.pool.lookup(block_hash, parent, tuple(tokens[i * bs : (i + 1) * bs]))
            if block is None:
                break
            hits.append(block)
            parent = block_hash
        start = len(hits) * bs
        room = min(bs - 1, request.num_tokens - 1 - start)
        partial = self.pool.lookup_partial(parent, tuple(tokens[start : start + room]))
        if partial is None:
            return hits, start
        return [*hits, partial], start + len(partial.token_ids)

    def allocate_slots(
        self,
        request: Request,
        num_new_tokens: int,
        new_computed_blocks: list[KVCacheBlock] | None = None,
        num_new_computed_tokens: int | None = None,
    ) -> list[int] | None:
        """Make room for num_new_tokens more tokens of request.

        new_computed_blocks (on admission) are prefix-cache hits to adopt first, holding
        num_new_computed_tokens tokens (default: all full). Returns the request's full block-id
        list, or None (changing nothing) when the pool is too small.
        """
        blocks = self._blocks.setdefault(request.request_id, [])
        adopted = new_computed_blocks or []
        num_adopted = (
            len(adopted) * self.block_size
            if num_new_computed_tokens is None
            else num_new_computed_tokens
        )
        num_computed = request.num_computed_tokens + num_adopted
        total = num_computed + num_new_tokens
        num_required = -(-total // self.block_size) - len(blocks) - len(adopted)
        num_revived = sum(1 for b in adopted if b.ref_count == 0)
        if max(num_required, 0) + num_revived > self.pool.num_free_blocks:
            if not blocks:
                del self._blocks[request.request_id]
            return None
        if new_computed_blocks is not None:
            self.stats.queries += request.num_tokens
            self.stats.hits += num_adopted
        self.pool.touch(adopted)
        blocks.extend(adopted)
        if num_required > 0:
            blocks.extend(self.pool.allocate(num_required))
        self._cache_full_blocks(request, blocks, total)
        return [b.block_id for b in blocks]

    def _cache_full_blocks(self, request: Request, blocks: list[KVCacheBlock], total: int) -> None:
        """Hash blocks that are full once this step's tokens are written.

        NOTE: registering before the step runs is safe and lets a request admitted in the same
        step share them: the runner writes each layer's KV for all tokens before any attention
        of that layer reads it.
        """
        if not self.enable_caching:
            return
        start = self._num_hashed.get(request.request_id, 0)
        end = total // self.block_size
        if end <= start:
            return
        self._update_hashes(request, end * self.block_size)
        bs, hashes = self.block_size, request.block_hashes
        for i in range(start, end):
            parent = hashes[i - 1] if i else _root(request)
            tokens = tuple(request.token_ids[i * bs : (i + 1) * bs])
            self.pool.cache_block(blocks[i], hashes[i], parent, tokens)
        self._num_hashed[request.request_id] = end

    def free(self, request: Request) -> None:
        """Release every block of request (cached ones stay revivable until evicted, and an
        unfilled last block becomes a partial block)."""
        blocks = self._blocks.pop(request.request_id, [])
        self._num_hashed.pop(request.request_id, None)
        full, rest = divmod(request.num_computed_tokens, self.block_size)
        if self.enable_caching and rest and full < len(blocks):
            self._update_hashes(request, full * self.block_size)
            start = full * self.block_size
            self.pool.cache_partial(
                blocks[full],
                request.block_hashes[full - 1] if full else _root(request),
                tuple(request.token_ids[start : start + rest]),
            )
        self.pool.free(list(reversed(blocks)))

    def check_integrity(self) -> None:
        self.pool.check_integrity()
        counts: dict[int, int] = {}
        for blocks in self._blocks.values():
            for b in blocks:
                counts[b.block_id] = counts.get(b.block_id, 0) + 1
        for block in self.pool.blocks:
            assert block.ref_count == counts.get(block.block_id, 0), (
                f"block {block.block_id}: ref_count {block.ref_count} != owners"
            )


def _root(request: Request) -> int | None:
    """What a request's first block chains from: nothing, or its cache salt. Requests with
    different salts share no block, so a tenant cannot learn from its cached-token counts
    what another tenant's prompts begin with."""
    salt = request.sampling_params.cache_salt
    return None if salt is None else hash_block(None, (), ("cache_salt", salt))
