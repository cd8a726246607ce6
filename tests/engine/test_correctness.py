"""The engine against a plain full-recompute reference, and against itself under batching,
chunked prefill, prefix caching and preemption."""

from __future__ import annotations

import pytest
import torch

from chatfleet import SamplingParams
from chatfleet.config.engine_config import CacheConfig
from tests.conftest import make_llm
from tests.reference_model import reference_logits

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Here is a short story about a robot who learns to paint:",
    "Explain why the sky is blue in one paragraph.",
]
GREEDY = SamplingParams(temperature=0, max_tokens=64, ignore_eos=True, logprobs=5)
# Engine and reference run the same matmul kernels; they differ in attention (SDPA vs explicit
# softmax) and RoPE arithmetic, so logprobs agree to float32 rounding amplified by 30 layers.
LOGPROB_ATOL = 2e-2


def test_greedy_matches_full_recompute_reference(llm):
    outputs = llm.generate(PROMPTS, GREEDY)
    model = llm.engine.runner.model
    worst = 0.0
    for prompt, out in zip(PROMPTS, outputs, strict=True):
        ids = llm.tokenizer.encode(prompt)
        completion = out.outputs[0]
        assert len(completion.token_ids) == 64
        # One causal forward over prompt + output predicts every generated token at once.
        ref_all = reference_logits(model, ids + completion.token_ids[:-1]).log_softmax(-1)
        ref_all = ref_all[len(ids) - 1 :]
        pairs = zip(completion.token_ids, completion.logprobs, strict=True)
        for step, (token, lp) in enumerate(pairs):
            ref = ref_all[step]
            assert token == int(ref.argmax()), f"{prompt!r}: token {step} differs"
            for alt_id, alt_lp in lp.top:
                worst = max(worst, abs(alt_lp - float(ref[alt_id])))
    assert worst < LOGPROB_ATOL, f"logprobs differ by up to {worst}"


def test_batch_invariance_with_chunked_prefill(small_step_llm):
    """16 different prompts together (token budget 48: chunked prefill mixed with decodes)
    give the same greedy tokens as each prompt alone."""
    prompts = [f"{p} (variant {i})" for i in range(4) for p in PROMPTS]
    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    together = small_step_llm.generate(prompts, params)
    alone = [small_step_llm.generate(p, params)[0] for p in prompts]
    for a, b in zip(together, alone, strict=True):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids


def _long_prefix(llm, num_tokens: int) -> list[int]:
    text = " ".join(f"Rule {i}: always answer politely and cite item {i * 7}." for i in range(200))
    ids = llm.tokenizer.encode(text)
    assert len(ids) >= num_tokens
    return ids[:num_tokens]


def test_prefix_caching_hits_and_matches_uncached(llm):
    prefix = _long_prefix(llm, 500)
    first = prefix + llm.tokenizer.encode(" Question one: what is rule 3?")
    second = prefix + llm.tokenizer.encode(" Question two: summarise rule 12.")
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    llm.generate(first, params)
    cached = llm.generate(second, params)[0]
    assert cached.num_cached_tokens >= 480
    llm.engine.kv_cache_manager.check_integrity()

    uncached_llm = make_llm(
        cache=CacheConfig(kv_cache_memory_bytes=256 << 20, enable_prefix_caching=False)
    )
    uncached = uncached_llm.generate(second, params)[0]
    assert uncached.num_cached_tokens == 0
    assert cached.outputs[0].token_ids == uncached.outputs[0].token_ids


def test_next_turn_reuses_every_computed_token_and_matches_uncached(llm):
    """A chat's next turn (the previous prompt, its answer, a new message) hits every token
    the previous request computed, its unfilled last block included, and decodes as a cold
    engine does."""
    params = SamplingParams(temperature=0, max_tokens=21, ignore_eos=True)
    first = _long_prefix(llm, 150)
    answer = llm.generate(first, params)[0].outputs[0].token_ids
    second = first + answer + llm.tokenizer.encode(" And rule 9?")
    assert (len(first) + len(answer) - 1) % llm.engine.runner.block_size  # ends mid-block
    cached = llm.generate(second, params)[0]
    assert cached.num_cached_tokens == len(first) + len(answer) - 1
    llm.engine.kv_cache_manager.check_integrity()
    uncached_llm = make_llm(
        cache=CacheConfig(kv_cache_memory_bytes=256 << 20, enable_prefix_caching=False)
    )
    uncached = uncached_llm.generate(second, params)[0]
    assert cached.outputs[0].token_ids == uncached.outputs[0].token_ids


def test_preemption_gives_identical_outputs():
    """Greedy and seeded requests recomputed after a preemption give the very same tokens and
    logprob floats: their output tokens are attended one row at a time again, as decoded."""
    prompts = [f"{p} Please be detailed." for p in PROMPTS] * 2
    greedy = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True, logprobs=2)
    seeded = SamplingParams(temperature=0.8, seed=11, max_tokens=48, ignore_eos=True, logprobs=2)
    params = [greedy, seeded] * 4
    # Without the prefix cache in both: a prompt is computed as one chunk by each.
    uncached = CacheConfig(kv_cache_memory_bytes=256 << 20, enable_prefix_caching=False)
    roomy = make_llm(cache=uncached)
    expected = roomy.generate(prompts, params)
    # 8 requests x ~5 blocks each do not fit in 16 blocks of 16 tokens.
    tight = make_llm(cache=CacheConfig(num_blocks_override=16, enable_prefix_caching=False))
    got = tight.generate(prompts, params)
    assert tight.engine.scheduler.num_preemptions > 0
    for a, b in zip(expected, got, strict=True):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        assert a.outputs[0].logprobs == b.outputs[0].logprobs
    tight.engine.kv_cache_manager.check_integrity()
    assert tight.engine.kv_cache_manager.pool.num_free_blocks == 16


@pytest.mark.parametrize("backend", ["reference", "sdpa", "cpu"])
def test_engine_runs_on_each_attention_backend(backend, llm):
    engine_llm = make_llm(attention=backend)
    assert engine_llm.engine.runner.attention == backend
    out = engine_llm.generate(PROMPTS[0], SamplingParams(temperature=0, max_tokens=8))[0]
    assert "Paris" in out.outputs[0].text
    assert torch.get_num_threads() >= 1


def test_hf_safetensors_dir_serves_the_same_model(llm, tmp_path):
    from chatfleet.model.export import export_hf_dir

    export_hf_dir(None, str(tmp_path))
    hf_llm = make_llm(model=str(tmp_path))
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    assert hf_llm.tokenizer.apply_chat_template(messages) == llm.tokenizer.apply_chat_template(
        messages
    )
    expected = llm.generate(PROMPTS, params)
    got = hf_llm.generate(PROMPTS, params)
    for a, b in zip(expected, got, strict=True):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids


def test_generation_stops_at_every_end_the_model_dir_names(llm, tmp_path):
    """generation_config.json may list ends beyond the tokenizer's EOS (Llama 3.1's
    end_of_text and eom_id, Qwen2.5's endoftext): the model emits them and must stop there."""
    import json

    from chatfleet.model.export import export_hf_dir

    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    free = llm.generate(PROMPTS[0], params)[0].outputs[0].token_ids
    stop_at = next(k for k in range(1, len(free)) if free[k] not in free[:k])
    export_hf_dir(None, str(tmp_path))
    ends = [*llm.tokenizer.eos_token_ids, free[stop_at]]
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": ends}))
    hf_llm = make_llm(model=str(tmp_path))
    out = hf_llm.generate(PROMPTS[0], SamplingParams(temperature=0, max_tokens=8))[0].outputs[0]
    assert out.token_ids == free[: stop_at + 1] and out.finish_reason == "stop"


def test_a_process_that_exits_right_after_loading_exits_cleanly():
    """The grammar compiler is still being built in the background when such a process ends:
    as a daemon thread in native code it crashed the interpreter's shutdown (SIGSEGV)."""
    import subprocess
    import sys

    script = "from chatfleet import LLM; LLM()"
    codes = [
        subprocess.run([sys.executable, "-c", script], timeout=300).returncode for _ in range(2)
    ]
    assert codes == [0, 0]
