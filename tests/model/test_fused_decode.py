"""The fused decode step (one C++ call for every layer) against the per-layer path."""

from __future__ import annotations

import pytest

from chatfleet import SamplingParams
from chatfleet.model.fused_decode import load_kernel
from tests.conftest import make_llm

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Here is a short story about a robot who learns to paint:",
]


def test_fused_decode_is_bit_identical_to_the_layer_path(llm):
    """Same tokens and the very same logprob floats, for a batch of decodes (several requests,
    different context lengths) and a seeded sampled request beside them."""
    if load_kernel() is None or llm.engine.runner.model.fused_decode is None:
        pytest.skip("no int8 weights / VNNI kernel here")
    unfused = make_llm(fused_decode=False)
    assert unfused.engine.runner.model.fused_decode is None
    params = [SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, logprobs=3)] * 3
    params.append(SamplingParams(temperature=0.8, top_p=0.9, seed=7, max_tokens=40, logprobs=3))
    prompts = PROMPTS + ["Write a poem about rain."]
    got = llm.generate(prompts, params)
    want = unfused.generate(prompts, params)
    for a, b in zip(got, want, strict=True):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        assert a.outputs[0].logprobs == b.outputs[0].logprobs  # exact float equality
