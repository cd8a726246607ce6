"""The int8 KV cache (model/attention/kv_format.py): what it holds, how much it holds, and the
real model's accuracy with it against an fp32 cache."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from chatfleet.bench.agreement import greedy_agreement
from chatfleet.model.attention import kv_format
from tests.conftest import TEST_CACHE, make_llm


def test_int8_heads_hold_codes_and_a_scale():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 64, generator=gen) * torch.tensor([1e-3, 1.0, 300.0])[:, None]
    x[0, 0] = 0.0
    stored = kv_format.encode(x, torch.int8)
    assert stored.shape == (5, 3, 64 + kv_format.SCALE_BYTES) and stored.dtype == torch.int8
    assert stored[..., :64].abs().amax(-1)[1:].eq(127).all()  # each head spans its codes
    back = kv_format.decode(stored, torch.float32)
    # half a step per code, the step at most |x| / 127 (the rotation keeps lengths)
    assert ((back - x).norm(dim=-1) <= x.norm(dim=-1) / 127 / 2 * 8 + 1e-12).all()
    assert torch.equal(back[0, 0], torch.zeros(64))  # zeros: scale 0, no NaN
    assert kv_format.bytes_per_token(30, 3, 64, torch.int8) == 2 * 30 * 3 * 68
    with pytest.raises(ValueError, match="power-of-two head_dim"):
        kv_format.cache_shape(8, 16, 2, 96, torch.int8)  # no Hadamard matrix of order 96
    half = kv_format.encode(x, torch.float16)
    assert half.dtype == torch.float16
    assert kv_format.decode(half, torch.float32).dtype == torch.float32


def test_an_outlier_channel_leaves_the_other_channels_their_precision():
    """A key with one channel 50x the rest, as real keys have: one scale per head over the
    plain values would leave the small channels errors of ~11% of their size; stored rotated,
    every channel mixes all of them and they keep ~2%."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(256, 64, generator=gen)
    x[:, 9] = 50.0
    err = kv_format.decode(kv_format.encode(x, torch.int8), torch.float32) - x
    small = torch.arange(64) != 9
    relative = err[:, small].pow(2).mean().sqrt() / x[:, small].pow(2).mean().sqrt()
    assert relative < 0.03, relative


def test_an_int8_cache_holds_nearly_twice_the_tokens_of_fp16_in_the_same_memory():
    int8 = make_llm(cache=replace(TEST_CACHE, kv_cache_dtype="int8")).engine.runner
    fp16 = make_llm(cache=replace(TEST_CACHE, kv_cache_dtype="fp16")).engine.runner
    assert int8.info.num_blocks == TEST_CACHE.kv_cache_memory_bytes // (
        int8.block_size * kv_format.bytes_per_token(30, 3, 64, torch.int8)
    )
    assert int8.info.num_blocks >= 1.8 * fp16.info.num_blocks
    assert int8.kv_caches[0].shape[-1] == 64 + kv_format.SCALE_BYTES


def test_the_real_model_with_an_int8_cache_stays_close_to_an_fp32_cache():
    """8 chat replies x 64 greedy tokens, prefill and decode through the int8 cache, against the
    same weights with an fp32 cache: most tokens agree, and the logprobs of the tokens both
    chose stay close."""
    int8 = make_llm(cache=replace(TEST_CACHE, kv_cache_dtype="int8"))
    fp32 = make_llm(cache=replace(TEST_CACHE, kv_cache_dtype="fp32"))
    check = greedy_agreement(int8, fp32, max_tokens=64)
    assert check.agreed >= 0.75 * 8 * 64, f"{check.agreed} of 512 greedy tokens agree"
    assert check.max_logprob_diff < 0.1, f"logprobs differ by up to {check.max_logprob_diff}"
