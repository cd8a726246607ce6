"""The fused decode step (one C++ call for every layer) against the per-layer path."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from chatfleet import SamplingParams
from chatfleet.model import kernels
from chatfleet.model.fused_decode import load_kernel
from chatfleet.model.matmul_plan import ALL_BUCKETS
from chatfleet.modelfile import gguf_blocks
from chatfleet.modelfile.gguf_writer import K_QUANTS, random_k_quants, write_gguf
from tests.conftest import TEST_CACHE, make_llm
from tests.model.test_architectures import build

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Here is a short story about a robot who learns to paint:",
]


@pytest.mark.parametrize("kv_cache_dtype", ["auto", "int8"])
def test_fused_decode_is_bit_identical_to_the_layer_path(llm, kv_cache_dtype):
    """Same tokens and the very same logprob floats, for a batch of decodes (several requests,
    different context lengths) and a seeded sampled request beside them; with the default fp16
    cache and with int8 codes (both paths quantize a head the same way)."""
    if load_kernel() is None or llm.engine.runner.model.fused_decode is None:
        pytest.skip("no int8 weights / VNNI kernel here")
    if kv_cache_dtype != "auto":
        llm = make_llm(cache=replace(TEST_CACHE, kv_cache_dtype=kv_cache_dtype))
        assert llm.engine.runner.kv_dtype == torch.int8
    unfused = make_llm(fused_decode=False, cache=llm.engine.config.cache)
    assert unfused.engine.runner.model.fused_decode is None
    params = [SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, logprobs=3)] * 3
    params.append(SamplingParams(temperature=0.8, top_p=0.9, seed=7, max_tokens=40, logprobs=3))
    assert_same_replies(llm, unfused, PROMPTS + ["Write a poem about rain."], params)


def test_a_large_batch_of_unequal_contexts_is_bit_identical_to_the_layer_path(llm):
    """Requests of many context lengths, more of them than threads and not a multiple of the
    chunks their attention rows are handed out in, then fewer as they finish: each row is the
    layer path's, whichever thread took it."""
    if load_kernel() is None or llm.engine.runner.model.fused_decode is None:
        pytest.skip("no int8 weights / VNNI kernel here")
    unfused = make_llm(fused_decode=False, cache=llm.engine.config.cache)
    prompts = [" ".join(["word"] * (1 + 7 * i)) + PROMPTS[i % 3] for i in range(37)]
    params = [
        SamplingParams(temperature=0, max_tokens=12 + i % 9, ignore_eos=True, logprobs=2)
        for i in range(37)
    ]
    assert_same_replies(llm, unfused, prompts, params)


def k_quant_model(tmp_path, qtype, seed: int) -> str:
    """A tiny random Llama written as a GGUF of `qtype` blocks."""
    _, model = build(tmp_path, "llama")
    encoded = random_k_quants(model, qtype, np.random.default_rng(seed))
    path = str(tmp_path / f"llama-{qtype.name}.gguf")
    write_gguf(model, "llama", path, qtype, encoded=encoded)
    return path


def assert_same_replies(a, b, prompts, params) -> None:
    """The same tokens and the very same logprob floats from engines a and b."""
    for x, y in zip(a.generate(prompts, params), b.generate(prompts, params), strict=True):
        assert x.outputs[0].token_ids == y.outputs[0].token_ids
        assert x.outputs[0].logprobs == y.outputs[0].logprobs


@pytest.mark.parametrize("qtype", list(K_QUANTS), ids=lambda q: q.name)
def test_fused_decode_reads_every_code_width_as_the_layer_path(tmp_path, qtype):
    """K-quant files held in 4 (Q4_K), 5 (Q5_K) and 6 bits (Q6_K, a scale per half block):
    the fused step reads each width's packed layout as the per-layer kernel does."""
    if load_kernel() is None:
        pytest.skip("no VNNI kernel here")
    path = k_quant_model(tmp_path, qtype, seed=0)
    fused, unfused = (
        make_llm(model=path, weight_format="int8", fused_decode=f) for f in (True, False)
    )
    assert fused.engine.runner.model.fused_decode is not None
    bits = {fused.engine.runner.model.layers[0].gate_up.bits}
    assert bits == {gguf_blocks.code_bits(qtype)}
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, logprobs=2)
    assert_same_replies(fused, unfused, [[1, 2, 3, 4, 5], list(range(10, 40))], params)


@pytest.mark.parametrize("qtype", list(K_QUANTS), ids=lambda q: q.name)
def test_amx_tiles_in_both_paths_change_no_bit(tmp_path, qtype):
    """Every decoder matmul at every row count on the AMX tile pass (its software copy, so on
    any CPU), set per linear as a matmul plan sets it: prefill chunks layer by layer and decode
    steps in the fused call give the tokens and logprob floats of the VNNI kernel alone."""
    if load_kernel() is None:
        pytest.skip("no VNNI kernel here")
    path = k_quant_model(tmp_path, qtype, seed=1)
    tiled, plain = (make_llm(model=path, weight_format="int8") for _ in range(2))
    model = tiled.engine.runner.model
    linears = [m for layer in model.layers for m in (layer.qkv, layer.o, layer.gate_up, layer.down)]
    for linear in linears:
        linear.tile_mask = ALL_BUCKETS
    if not kernels.amx_tiles():  # the masks reach the fused call, which refuses hardware tiles
        with pytest.raises(RuntimeError, match="cannot use AMX tiles"):
            model.fused_decode.follow_tiles()
    for linear in linears:
        linear.emulate_tiles = True
    model.fused_decode.follow_tiles()
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, logprobs=2)
    prompts = [[1, 2, 3, 4, 5], list(range(10, 40)), list(range(50, 70))]
    assert_same_replies(tiled, plain, prompts, params)


def test_a_step_with_caches_for_fewer_layers_is_refused(llm):
    """The fused call holds the model's weights from its start; a step that passes caches for
    fewer layers than it holds is an error, not a step that silently skips layers."""
    fused = llm.engine.runner.model.fused_decode
    if fused is None:
        pytest.skip("no int8 weights / VNNI kernel here")
    caches = llm.engine.runner.kv_caches
    h = torch.zeros(1, llm.engine.runner.model.config.hidden_size)
    cos = sin = torch.ones(1, llm.engine.runner.model.config.head_dim)
    one = torch.zeros(1, dtype=torch.long)
    with pytest.raises(RuntimeError, match="a cache per layer"):
        fused.layers.run(h, caches[:-1], cos, sin, one, one[:, None], one + 1, 1.0, 1)
