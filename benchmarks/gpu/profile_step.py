"""Profile decode steps on CUDA for one weight format: top ops by CPU and by CUDA time.

PYTHONPATH=. python3 benchmarks/gpu/profile_step.py MODEL.gguf bf16
"""

from __future__ import annotations

import sys

import torch
from torch.profiler import ProfilerActivity, profile

from chatfleet import LLM, SamplingParams
from chatfleet.config.engine_config import CacheConfig


def main() -> None:
    model, fmt = sys.argv[1], sys.argv[2]
    llm = LLM(
        model=model,
        device="cuda",
        weight_format=fmt,
        cache=CacheConfig(kv_cache_memory_bytes=1 << 30),
    )
    engine = llm.engine
    params = SamplingParams(temperature=0, max_tokens=200, ignore_eos=True)
    engine.add_request("r", "Once upon a time", params)
    for _ in range(10):
        engine.step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            engine.step()
        torch.cuda.synchronize()
    table = prof.key_averages()
    print(table.table(sort_by="self_cpu_time_total", row_limit=15))
    print(table.table(sort_by="self_cuda_time_total", row_limit=10))


if __name__ == "__main__":
    main()
