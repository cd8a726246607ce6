"""The engine on CUDA: correctness checks of the CPU suite plus decode speed, as JSON.

Run on a GPU machine: PYTHONPATH=. python3 benchmarks/gpu/gpu_check.py MODEL.gguf OUT.json
(MODEL defaults to the packaged SmolLM2; the device machine gets a truncated copy because of
its transfer limit, see truncate_gguf.py).
"""

from __future__ import annotations

import json
import sys
import time

import torch

from chatfleet import LLM, SamplingParams
from chatfleet.config.engine_config import CacheConfig, SchedulerConfig
from tests.reference_model import reference_logits

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Explain why the sky is blue.",
    "Here is a short story about a robot:",
]


def check_format(model: str | None, fmt: str) -> dict:
    cache = CacheConfig(kv_cache_memory_bytes=1 << 30)
    llm = LLM(model=model, device="cuda", weight_format=fmt, cache=cache)
    greedy = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True, logprobs=5)
    outs = llm.generate(PROMPTS, greedy)
    mismatches, worst = 0, 0.0
    for prompt, out in zip(PROMPTS, outs, strict=True):
        ids, comp = llm.tokenizer.encode(prompt), out.outputs[0]
        ref = reference_logits(llm.engine.runner.model, ids + comp.token_ids[:-1]).log_softmax(-1)
        ref = ref[len(ids) - 1 :]
        for step, lp in enumerate(comp.logprobs):
            mismatches += int(comp.token_ids[step] != int(ref[step].argmax()))
            worst = max(worst, max(abs(v - float(ref[step][t])) for t, v in lp.top))
    small = LLM(
        model=model,
        device="cuda",
        weight_format=fmt,
        cache=cache,
        scheduler=SchedulerConfig(max_num_batched_tokens=48),
    )
    prompts16 = [f"{p} ({i})" for i in range(4) for p in PROMPTS]
    p32 = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    together = small.generate(prompts16, p32)
    alone = [small.generate(p, p32)[0] for p in prompts16]
    batch_equal = sum(
        a.outputs[0].token_ids == b.outputs[0].token_ids
        for a, b in zip(together, alone, strict=True)
    )
    tight = LLM(
        model=model,
        device="cuda",
        weight_format=fmt,
        cache=CacheConfig(num_blocks_override=16, enable_prefix_caching=False),
    )
    pre = tight.generate(
        prompts16[:8], SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)
    )
    ref8 = llm.generate(
        prompts16[:8], SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)
    )
    preempt_equal = sum(
        a.outputs[0].token_ids == b.outputs[0].token_ids for a, b in zip(pre, ref8, strict=True)
    )
    speed = {}
    for batch in (1, 64, 256):
        params = SamplingParams(temperature=0, max_tokens=128, ignore_eos=True)
        llm.generate(["warm up"] * batch, SamplingParams(temperature=0, max_tokens=4))
        torch.cuda.synchronize()
        t = time.perf_counter()
        llm.generate([f"Story {i}:" for i in range(batch)], params)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t
        speed[batch] = {
            "output_tok_s": round(batch * 128 / dt, 1),
            "ms_per_step": round(dt / 128 * 1e3, 2),
        }
    return {
        "greedy_token_mismatches_vs_reference": mismatches,
        "max_logprob_diff_vs_reference": worst,
        "batch_invariant_of_16": batch_equal,
        "preempted_identical_of_8": preempt_equal,
        "num_preemptions": tight.engine.scheduler.num_preemptions,
        "decode": speed,
    }


def main() -> None:
    model = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] != "default" else None
    out = sys.argv[2] if len(sys.argv) > 2 else "gpu_check.json"
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "model": model}
    for fmt in ("fp32", "bf16"):
        report[fmt] = check_format(model, fmt)
        print(fmt, json.dumps(report[fmt]), flush=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
