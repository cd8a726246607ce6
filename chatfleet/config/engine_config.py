"""The engine's frozen configuration, validated once at start-up.

Values discovered while starting (the number of KV blocks, EOS ids) are returned by the
component that finds them and passed on; they are never written back into a config.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from chatfleet.config.flags import format_bytes, parse_bytes, setting

WEIGHT_FORMATS = ("auto", "fp32", "bf16", "int8")
KV_CACHE_DTYPES = ("auto", "fp32", "fp16", "bf16", "int8")


@dataclass(frozen=True)
class RopeScaling:
    """How positions past the training context are stretched (HF `rope_scaling`).

    "linear": every frequency divided by `factor`. "llama3" (Llama 3.1+): frequencies whose
    wavelength exceeds original_context / low_freq_factor divided by `factor`, those below
    original_context / high_freq_factor kept, the band between blended smoothly. "factors": each
    frequency divided by its own factor, as GGUF files store llama3 scaling (`rope_freqs`).
    "yarn" (Qwen2.5's long-context setting): frequencies that turn fewer than `beta_slow` times
    over the original context divided by `factor`, those turning more than `beta_fast` times
    kept, a linear ramp between, and q and k both scaled by `attention_factor`."""

    kind: str  # "linear", "llama3", "factors" or "yarn"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192
    factors: tuple[float, ...] = ()  # "factors": one per frequency (head_dim / 2)
    beta_fast: float = 32.0  # "yarn": rotations over the original context, ramp's ends
    beta_slow: float = 1.0
    attention_factor: float = 1.0  # "yarn": multiplies cos and sin
    truncate: bool = True  # "yarn": the ramp's ends rounded to whole dimensions


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a Llama-family model (Llama, Mistral, Qwen2), read from the model file."""

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
    family: str = "llama"  # a chatfleet.model.architectures family
    qkv_bias: bool = False
    rope_scaling: RopeScaling | None = None
    sliding_window: int | None = None  # attention looks back this far (None: everything)

    @property
    def max_context_len(self) -> int:
        """The longest context served exactly: within a sliding window, full attention and
        windowed attention agree, so the context is capped at the window."""
        if self.sliding_window is None:
            return self.max_position_embeddings
        return min(self.max_position_embeddings, self.sliding_window)

    def __post_init__(self) -> None:
        if self.head_dim == 0:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")


@dataclass(frozen=True)
class CacheConfig:
    """Paged KV cache: block size, memory budget and prefix caching."""

    block_size: int = 16
    kv_cache_memory_bytes: int = field(
        default=2 << 30,
        metadata=setting("kv_cache_memory", "KV cache size, e.g. 2GiB", parse_bytes, format_bytes),
    )
    enable_prefix_caching: bool = True
    # Tests use tiny pools to force preemption.
    num_blocks_override: int | None = field(default=None, metadata=setting(hidden=True))
    kv_cache_dtype: str = field(
        default="auto",
        metadata=setting(
            help="auto: fp16 on CPU (half the bytes decode attention reads), the compute "
            "dtype on CUDA; int8: codes with a scale per token and head, half fp16's bytes",
            choices=KV_CACHE_DTYPES,
        ),
    )

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.kv_cache_memory_bytes < 1:
            raise ValueError("block_size and kv_cache_memory_bytes must be positive")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype must be one of {KV_CACHE_DTYPES}")


@dataclass(frozen=True)
class SchedulerConfig:
    """Continuous batching limits for one engine step."""

    max_num_seqs: int = field(default=128, metadata=setting(help="requests in the running batch"))
    max_num_batched_tokens: int = field(default=512, metadata=setting(help="tokens per step"))
    max_model_len: int = 8192

    def __post_init__(self) -> None:
        if min(self.max_num_seqs, self.max_num_batched_tokens, self.max_model_len) < 1:
            raise ValueError("scheduler limits must be positive")


def _default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(frozen=True)
class EngineConfig:
    """Everything needed to build an engine. `model=None` is the packaged SmolLM2 GGUF."""

    model: str | None = field(
        default=None, metadata=setting(help="GGUF file or HF directory (default: SmolLM2-135M)")
    )
    device: str = "cpu"
    weight_format: str = field(default="auto", metadata=setting(choices=WEIGHT_FORMATS))
    num_threads: int = field(
        default_factory=_default_threads,
        metadata=setting(help="CPU threads (default: all this process may use)"),
    )
    # Decode-only steps in one C++ call where it applies (model/fused_decode.py); off gives
    # the same bits through the per-layer path (tests compare the two).
    fused_decode: bool = True
    batch_invariant: bool = field(
        default=True,
        metadata=setting(
            help="compute every row with the same kernels whatever the batch (greedy outputs "
            "do not depend on other requests); off, int8 layers take oneDNN bf16 for the row "
            "counts where it measures faster on this CPU (model/matmul_plan.py); AMX tiles, "
            "which change no bit, are used either way"
        ),
    )
    seed: int = 0
    step_trace: str | None = field(
        default=None,
        metadata=setting(
            help="append every engine step's timing and shape to this path as JSON lines "
            "({pid} is replaced by the process id; see chatfleet plan calibrate --trace)",
            metavar="PATH",
        ),
    )
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)

    def __post_init__(self) -> None:
        if self.weight_format not in WEIGHT_FORMATS:
            raise ValueError(f"weight_format must be one of {WEIGHT_FORMATS}")
