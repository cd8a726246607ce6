"""Every attention backend against the reference on the same random paged cache."""

from __future__ import annotations

import pytest
import torch

from chatfleet.model.attention import BACKENDS, load_kernel, write_kv
from chatfleet.model.attention.cpu_paged import MAX_PAGED_QUERY_LEN
from chatfleet.model.forward_context import ForwardContext

HEADS, KV_HEADS, DIM, BLOCK, NUM_BLOCKS = 9, 3, 64, 16, 64


def _batch(query_lens: list[int], context_lens: list[int], seed: int = 0):
    """A step with scattered (shuffled) blocks; decodes (query_len 1) must come first."""
    gen = torch.Generator().manual_seed(seed)
    cache = torch.randn(2, NUM_BLOCKS, BLOCK, KV_HEADS, DIM, generator=gen)
    free = torch.randperm(NUM_BLOCKS, generator=gen).tolist()
    tables, positions, slots = [], [], []
    for q, c in zip(query_lens, context_lens, strict=True):
        n = -(-(q + c) // BLOCK)
        blocks = [free.pop() for _ in range(n)]
        tables.append(blocks)
        for p in range(c, c + q):
            positions.append(p)
            slots.append(blocks[p // BLOCK] * BLOCK + p % BLOCK)
    width = max(len(t) for t in tables)
    ctx = ForwardContext(
        positions=torch.tensor(positions),
        slot_mapping=torch.tensor(slots),
        block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables]),
        query_lens=query_lens,
        context_lens=context_lens,
        num_decodes=sum(1 for q in query_lens if q == 1),
    )
    num_tokens = sum(query_lens)
    q = torch.randn(num_tokens, HEADS, DIM, generator=gen)
    k = torch.randn(num_tokens, KV_HEADS, DIM, generator=gen)
    v = torch.randn(num_tokens, KV_HEADS, DIM, generator=gen)
    write_kv(cache, k, v, ctx.slot_mapping)
    return q, cache, ctx


CASES = {
    "decodes only": ([1, 1, 1], [37, 5, 130]),
    "prefill only": ([40], [0]),
    "mixed with cached context": ([1, 1, 25, 7], [64, 3, 16, 90]),
    # a chunk longer than MAX_PAGED_QUERY_LEN (SDPA) between paged rows: rows not a prefix
    "long and short prefills": ([1, MAX_PAGED_QUERY_LEN + 72, 7], [10, 5, 90]),
}


@pytest.mark.parametrize("backend", ["sdpa", "cpu"])
@pytest.mark.parametrize("case", list(CASES))
def test_backend_matches_reference(backend, case):
    if backend == "cpu" and load_kernel() is None:
        pytest.skip("no C++ compiler for the CPU kernel")
    q, cache, ctx = _batch(*CASES[case])
    ref = BACKENDS["reference"](HEADS, KV_HEADS, DIM)
    fast = BACKENDS[backend](HEADS, KV_HEADS, DIM)
    ctx.attn_metadata = ref.build_metadata(ctx, BLOCK)
    expected = ref.forward(q, cache, ctx)
    ctx.attn_metadata = fast.build_metadata(ctx, BLOCK)
    got = fast.forward(q, cache, ctx)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_sdpa_decode_in_fp16_does_not_overflow():
    """Aligned queries and keys whose unscaled dot product is past fp16's 65504: the decode
    scores must be scaled before the product, as SDPA scales them."""
    q, cache, ctx = _batch([1, 1], [37, 90], seed=1)
    q = torch.full_like(q, 40.0) + q  # q.k ~ 64 * 40 * 40 = 102400 unscaled
    cache = torch.full_like(cache, 40.0) + cache
    ref = BACKENDS["reference"](HEADS, KV_HEADS, DIM)
    ctx.attn_metadata = ref.build_metadata(ctx, BLOCK)
    expected = ref.forward(q, cache, ctx)
    sdpa = BACKENDS["sdpa"](HEADS, KV_HEADS, DIM)
    ctx.attn_metadata = sdpa.build_metadata(ctx, BLOCK)
    got = sdpa.forward(q.half(), cache.half(), ctx)
    assert torch.isfinite(got).all()
    # fp16 scores near 12800 round by 8, so near-tied keys trade weight: close, not equal.
    torch.testing.assert_close(got.float(), expected, atol=0.0, rtol=0.05)


def test_cpu_kernel_is_batch_invariant():
    if load_kernel() is None:
        pytest.skip("no C++ compiler for the CPU kernel")
    q, cache, ctx = _batch([1, 1, 1, 1], [50, 7, 300, 19], seed=3)
    backend = BACKENDS["cpu"](HEADS, KV_HEADS, DIM)
    ctx.attn_metadata = backend.build_metadata(ctx, BLOCK)
    together = backend.forward(q, cache, ctx)
    one = ForwardContext(
        ctx.positions[2:3], ctx.slot_mapping[2:3], ctx.block_tables[2:3], [1], [300], 1
    )
    one.attn_metadata = backend.build_metadata(one, BLOCK)
    alone = backend.forward(q[2:3], cache, one)
    assert torch.equal(together[2:3], alone)


def test_cpu_kernel_prefill_rows_are_batch_invariant():
    """A short prefill chunk (the multi-row tile path) gives the same bits alone as beside
    decodes and other chunks, whatever tiles and threads the batch leads to."""
    if load_kernel() is None:
        pytest.skip("no C++ compiler for the CPU kernel")
    q, cache, ctx = _batch([1, 1, 20, 9], [50, 7, 300, 19], seed=4)
    backend = BACKENDS["cpu"](HEADS, KV_HEADS, DIM)
    ctx.attn_metadata = backend.build_metadata(ctx, BLOCK)
    together = backend.forward(q, cache, ctx)
    one = ForwardContext(
        ctx.positions[2:22], ctx.slot_mapping[2:22], ctx.block_tables[2:3], [20], [300], 0
    )
    one.attn_metadata = backend.build_metadata(one, BLOCK)
    alone = backend.forward(q[2:22], cache, one)
    assert torch.equal(together[2:22], alone)
