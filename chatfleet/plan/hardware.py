"""Accelerator profiles and model shapes: the inputs of the roofline step-time model.

Figures are the vendors' published peaks (dense, no sparsity); docs/capacity.md cites each
source. Prices are on-demand list prices (2025-26, sources in docs) and only a default: pass
`--price-per-hour` for the price you actually pay.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from chatfleet.config.engine_config import ModelConfig

GB = 1e9


@dataclass(frozen=True)
class AcceleratorProfile:
    name: str
    memory_bandwidth_bytes_s: float  # HBM / GDDR peak
    peak_flops: float  # dense bf16 tensor-core peak
    memory_bytes: float
    interconnect_bytes_s: float  # per-GPU NVLink (or PCIe) bandwidth, for tensor parallelism
    price_per_hour: float  # USD per accelerator-hour


ACCELERATORS: dict[str, AcceleratorProfile] = {
    a.name: a
    for a in (
        AcceleratorProfile("h100", 3.35e12, 989e12, 80 * GB, 900 * GB, 2.99),
        AcceleratorProfile("h200", 4.8e12, 989e12, 141 * GB, 900 * GB, 3.37),
        AcceleratorProfile("a100", 2.039e12, 312e12, 80 * GB, 600 * GB, 1.99),
        AcceleratorProfile("l4", 300e9, 121e12, 24 * GB, 64 * GB, 0.44),
    )
}


def get_accelerator(name: str) -> AcceleratorProfile:
    if name.lower() not in ACCELERATORS:
        raise ValueError(f"unknown accelerator {name!r}; choose from {sorted(ACCELERATORS)}")
    return ACCELERATORS[name.lower()]


def _llama(
    hidden: int, layers: int, heads: int, kv_heads: int, inter: int, vocab: int
) -> ModelConfig:
    return ModelConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        intermediate_size=inter,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        max_position_embeddings=131072,
        tie_word_embeddings=False,
    )


# Llama 3.1 8B and 70B (their HF config.json).
MODEL_SHAPES: dict[str, ModelConfig] = {
    "llama-8b": _llama(4096, 32, 32, 8, 14336, 128256),
    "llama-70b": _llama(8192, 80, 64, 8, 28672, 128256),
}


@dataclass(frozen=True)
class ModelShape:
    """A model's architecture and the bytes per weight and per KV element it is served with."""

    name: str
    config: ModelConfig
    weight_bytes_per_param: float = 2.0  # bf16
    kv_bytes_per_element: float = 2.0

    @property
    def num_layer_params(self) -> int:
        """Parameters every token multiplies through (all layers, not the embeddings)."""
        c = self.config
        attn = c.hidden_size * c.head_dim * (2 * c.num_heads + 2 * c.num_kv_heads)
        mlp = 3 * c.hidden_size * c.intermediate_size
        return c.num_layers * (attn + mlp)

    @property
    def num_lm_head_params(self) -> int:
        return self.config.vocab_size * self.config.hidden_size

    @property
    def num_params(self) -> int:
        embed = 0 if self.config.tie_word_embeddings else self.num_lm_head_params
        return self.num_layer_params + self.num_lm_head_params + embed

    @property
    def weight_bytes(self) -> float:
        """Bytes read per step: the layers and the LM head (the embedding table is a gather)."""
        return (self.num_layer_params + self.num_lm_head_params) * self.weight_bytes_per_param

    @property
    def kv_bytes_per_token(self) -> float:
        c = self.config
        return 2 * c.num_layers * c.num_kv_heads * c.head_dim * self.kv_bytes_per_element


def load_model_shape(name_or_path: str, weight_bytes_per_param: float = 2.0) -> ModelShape:
    """A named shape (llama-8b, llama-70b), a HF config.json (or its directory) or a GGUF."""
    if name_or_path in MODEL_SHAPES:
        return ModelShape(name_or_path, MODEL_SHAPES[name_or_path], weight_bytes_per_param)
    path = name_or_path
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"unknown model shape {name_or_path!r}: not {sorted(MODEL_SHAPES)}")
    name = os.path.basename(name_or_path.rstrip("/"))
    if path.endswith(".gguf"):
        from chatfleet.model.gguf_weights import config_from_gguf
        from chatfleet.modelfile.gguf_file import read_gguf

        meta, tensors = read_gguf(path)
        config = config_from_gguf(meta, {t.name for t in tensors})
    else:
        from chatfleet.model.hf_weights import config_from_hf

        with open(path, encoding="utf-8") as f:
            config = config_from_hf(json.load(f))
    return ModelShape(name, config, weight_bytes_per_param)
