"""The engine on CUDA: the CPU suite's correctness properties on the GPU (skipped without one).

Greedy tokens against the reference forward pass, batch invariance, identical outputs after
preemption, for fp32 and bf16 weights. `CHATFLEET_GPU_MODEL` picks the model file (default:
the packaged SmolLM2). Decode speed on a GPU is a benchmark's business, not a test's.
"""

from __future__ import annotations

import os
from functools import cache

import pytest

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

from chatfleet import LLM, SamplingParams  # noqa: E402
from chatfleet.config.engine_config import CacheConfig, SchedulerConfig  # noqa: E402
from tests.reference_model import reference_logits  # noqa: E402

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Explain why the sky is blue.",
    "Here is a short story about a robot:",
]
PROMPTS16 = [f"{p} ({i})" for i in range(4) for p in PROMPTS]
MODEL = os.environ.get("CHATFLEET_GPU_MODEL") or None
GREEDY = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)


@cache
def _llm(fmt: str, **config) -> LLM:
    config.setdefault("cache", CacheConfig(kv_cache_memory_bytes=1 << 30))
    return LLM(model=MODEL, device="cuda", weight_format=fmt, **config)


@pytest.mark.parametrize("fmt, max_mismatches", [("fp32", 0), ("bf16", 4)])
def test_greedy_tokens_follow_the_reference_forward(fmt, max_mismatches):
    llm = _llm(fmt)
    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True, logprobs=5)
    mismatches = 0
    for prompt, out in zip(PROMPTS, llm.generate(PROMPTS, params), strict=True):
        ids, choice = llm.tokenizer.encode(prompt), out.outputs[0]
        ref = reference_logits(llm.engine.runner.model, ids + choice.token_ids[:-1])
        ref = ref.log_softmax(-1)[len(ids) - 1 :]
        mismatches += sum(
            int(token != int(ref[step].argmax())) for step, token in enumerate(choice.token_ids)
        )
    assert mismatches <= max_mismatches


@pytest.mark.parametrize("fmt", ["fp32", "bf16"])
def test_batch_invariant_with_chunked_prefill(fmt):
    small = _llm(fmt, scheduler=SchedulerConfig(max_num_batched_tokens=48))
    together = small.generate(PROMPTS16, GREEDY)
    alone = [small.generate(p, GREEDY)[0] for p in PROMPTS16]
    for a, b in zip(together, alone, strict=True):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids


def test_preempted_requests_resume_identically_in_fp32():
    tight = _llm("fp32", cache=CacheConfig(num_blocks_override=16, enable_prefix_caching=False))
    params = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)
    preempted = tight.generate(PROMPTS16[:8], params)
    assert tight.engine.scheduler.num_preemptions > 0
    reference = _llm("fp32").generate(PROMPTS16[:8], params)
    for a, b in zip(preempted, reference, strict=True):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
