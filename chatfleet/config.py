"""Frozen configuration, validated once at start-up.

Values discovered while starting (the number of KV blocks, EOS ids) are returned by the
component that finds them and passed on; they are never written back into a config.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

WEIGHT_FORMATS = ("auto", "fp32", "bf16", "int8")
KV_CACHE_DTYPES = ("auto", "fp32", "fp16", "bf16")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a Llama-family model, read from the model file."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool = True
    head_dim: int = 0  # 0 = hidden_size // num_heads

    def __post_init__(self) -> None:
        if self.head_dim == 0:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")


@dataclass(frozen=True)
class CacheConfig:
    """Paged KV cache: block size, memory budget and prefix caching."""

    block_size: int = 16
    kv_cache_memory_bytes: int = 2 << 30
    enable_prefix_caching: bool = True
    num_blocks_override: int | None = None  # tests use tiny pools to force preemption
    # auto: fp16 on CPU (half the bytes decode attention reads), the compute dtype on CUDA.
    kv_cache_dtype: str = "auto"

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.kv_cache_memory_bytes < 1:
            raise ValueError("block_size and kv_cache_memory_bytes must be positive")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype must be one of {KV_CACHE_DTYPES}")


@dataclass(frozen=True)
class SchedulerConfig:
    """Continuous batching limits for one engine step."""

    max_num_seqs: int = 128
    max_num_batched_tokens: int = 512
    max_model_len: int = 8192

    def __post_init__(self) -> None:
        if min(self.max_num_seqs, self.max_num_batched_tokens, self.max_model_len) < 1:
            raise ValueError("scheduler limits must be positive")


def _default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(frozen=True)
class EngineConfig:
    """Everything needed to build an engine. `model=None` is the packaged SmolLM2 GGUF."""

    model: str | None = None
    device: str = "cpu"
    weight_format: str = "auto"
    num_threads: int = field(default_factory=_default_threads)
    # Decode-only steps in one C++ call where it applies (model/fused_decode.py); off gives
    # the same bits through the per-layer path (tests compare the two).
    fused_decode: bool = True
    seed: int = 0
    # A JSONL trace of every step's timing and shape (engine/step_trace.py); `{pid}` allowed.
    step_trace: str | None = None
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)

    def __post_init__(self) -> None:
        if self.weight_format not in WEIGHT_FORMATS:
            raise ValueError(f"weight_format must be one of {WEIGHT_FORMATS}")
