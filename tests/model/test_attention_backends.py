"""Every attention backend against the reference on the same random paged cache, in fp32 and
in int8 (codes with a scale per token and head)."""

from __future__ import annotations

import pytest
import torch

from chatfleet import LLM, SamplingParams
from chatfleet.config.engine_config import CacheConfig, SchedulerConfig
from chatfleet.model.attention import BACKENDS, kv_format, load_kernel, resolve_backend, write_kv
from chatfleet.model.attention.cpu_paged import MAX_PAGED_QUERY_LEN
from chatfleet.model.forward_context import ForwardContext

HEADS, KV_HEADS, DIM, BLOCK, NUM_BLOCKS = 9, 3, 64, 16, 64


def _batch(
    query_lens: list[int],
    context_lens: list[int],
    seed: int = 0,
    kv_dtype: torch.dtype = torch.float32,
):
    """A step with scattered (shuffled) blocks; decodes (query_len 1) must come first."""
    gen = torch.Generator().manual_seed(seed)
    cache = kv_format.encode(
        torch.randn(2, NUM_BLOCKS, BLOCK, KV_HEADS, DIM, generator=gen), kv_dtype
    )
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


KV_DTYPES = [torch.float32, torch.int8]


@pytest.mark.parametrize("kv_dtype", KV_DTYPES, ids=str)
@pytest.mark.parametrize("backend", ["sdpa", "cpu"])
@pytest.mark.parametrize("case", list(CASES))
def test_backend_matches_reference(backend, case, kv_dtype):
    if backend == "cpu" and load_kernel() is None:
        pytest.skip("no C++ compiler for the CPU kernel")
    q, cache, ctx = _batch(*CASES[case], kv_dtype=kv_dtype)
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


@pytest.mark.parametrize("kv_dtype", KV_DTYPES, ids=str)
def test_cpu_kernel_is_batch_invariant(kv_dtype):
    if load_kernel() is None:
        pytest.skip("no C++ compiler for the CPU kernel")
    q, cache, ctx = _batch([1, 1, 1, 1], [50, 7, 300, 19], seed=3, kv_dtype=kv_dtype)
    backend = BACKENDS["cpu"](HEADS, KV_HEADS, DIM)
    ctx.attn_metadata = backend.build_metadata(ctx, BLOCK)
    together = backend.forward(q, cache, ctx)
    one = ForwardContext(
        ctx.positions[2:3], ctx.slot_mapping[2:3], ctx.block_tables[2:3], [1], [300], 1
    )
    one.attn_metadata = backend.build_metadata(one, BLOCK)
    alone = backend.forward(q[2:3], cache, one)
    assert torch.equal(together[2:3], alone)


@pytest.mark.parametrize("kv_dtype", KV_DTYPES, ids=str)
def test_cpu_kernel_prefill_rows_are_batch_invariant(kv_dtype):
    """A short prefill chunk (the multi-row tile path) gives the same bits alone as beside
    decodes and other chunks, whatever tiles and threads the batch leads to."""
    if load_kernel() is None:
        pytest.skip("no C++ compiler for the CPU kernel")
    q, cache, ctx = _batch([1, 1, 20, 9], [50, 7, 300, 19], seed=4, kv_dtype=kv_dtype)
    backend = BACKENDS["cpu"](HEADS, KV_HEADS, DIM)
    ctx.attn_metadata = backend.build_metadata(ctx, BLOCK)
    together = backend.forward(q, cache, ctx)
    one = ForwardContext(
        ctx.positions[2:22], ctx.slot_mapping[2:22], ctx.block_tables[2:3], [20], [300], 0
    )
    one.attn_metadata = backend.build_metadata(one, BLOCK)
    alone = backend.forward(q[2:22], cache, one)
    assert torch.equal(together[2:22], alone)


@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.float16, torch.int8], ids=str)
def test_cpu_kernel_writes_the_cache_as_python_does(kv_dtype):
    """The fused RoPE + K/V write (C++) and the Python write path store the same heads: values
    exactly in fp32 / fp16, and up to last-bit rounding otherwise (RoPE by FMAs against torch's
    eager ops; the Hadamard rotation by butterflies against a matrix product), which may move
    an fp16 key by one ulp or an int8 code by one step."""
    if load_kernel() is None:
        pytest.skip("no C++ compiler for the CPU kernel")
    _, _, ctx = _batch([1, 6], [40, 9], seed=5)
    gen = torch.Generator().manual_seed(6)
    qkv = torch.randn(7, (HEADS + 2 * KV_HEADS) * DIM, generator=gen) * 3
    qkv[1, HEADS * DIM : (HEADS + 1) * DIM] = 0.0  # a key of zeros: scale 0, codes 0
    angles = torch.rand(7, DIM // 2, generator=gen) * 6
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    shape = kv_format.cache_shape(NUM_BLOCKS, BLOCK, KV_HEADS, DIM, kv_dtype)
    by_python, by_kernel = torch.zeros(shape, dtype=kv_dtype), torch.zeros(shape, dtype=kv_dtype)
    python, kernel = BACKENDS["sdpa"](HEADS, KV_HEADS, DIM), BACKENDS["cpu"](HEADS, KV_HEADS, DIM)
    q_python = python.rope_write_kv(qkv, cos, sin, by_python, ctx)
    q_kernel = kernel.rope_write_kv(qkv, cos, sin, by_kernel, ctx)
    torch.testing.assert_close(q_kernel, q_python, atol=1e-5, rtol=1e-5)
    flat = [c.view(2, -1, KV_HEADS, shape[-1])[:, ctx.slot_mapping] for c in (by_python, by_kernel)]
    if kv_dtype != torch.int8:
        assert torch.equal(flat[0][1], flat[1][1])  # values: no RoPE
    tol = 2 / 127 if kv_dtype == torch.int8 else 1e-3
    for part in (0, 1):
        want, got = (kv_format.decode(f[part], torch.float32) for f in flat)
        assert ((got - want).norm(dim=-1) <= tol * want.norm(dim=-1) + 1e-6).all()
    if kv_dtype == torch.int8:
        codes = flat[1][..., :DIM]
        assert codes.abs().max() == 127 and codes.min() >= -127
        assert torch.equal(flat[1][0, 1, 0], torch.zeros(DIM + 4, dtype=torch.int8))
        v = qkv[:, (HEADS + KV_HEADS) * DIM :].view(7, KV_HEADS, DIM)
        half_step = (v.norm(dim=-1) / 127 / 2) * DIM**0.5  # the L2 bound of half a step each
        assert ((kv_format.decode(flat[1][1], torch.float32) - v).norm(dim=-1) <= half_step).all()


def test_bf16_weights_are_served_by_sdpa_whatever_the_cache():
    """bf16 weights give bf16 queries, which the cpu kernel does not read: a cache it reads
    (fp16 here) must not pick it."""
    llm = LLM(
        weight_format="bf16",
        cache=CacheConfig(num_blocks_override=16, kv_cache_dtype="fp16"),
        scheduler=SchedulerConfig(max_num_seqs=1),
    )
    assert llm.engine.runner.attention == "sdpa"
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    assert len(llm.generate([1, 2, 3], params)[0].outputs[0].token_ids) == 4
    with pytest.raises(ValueError, match="no torch.bfloat16 queries"):
        resolve_backend("cpu", torch.device("cpu"), torch.float16, torch.bfloat16, DIM, 3)
