"""Model files -> (ModelConfig, fp32 weights under canonical names).

Canonical names: `embed`, `norm`, `lm_head` (absent when tied) and per layer
`layers.{i}.{attn_norm,q,k,v,o,ffn_norm,gate,up,down}`. Weights are [out, in] like
`nn.Linear`; quantized GGUF tensors are dequantized here and re-packed by the model into
the runtime weight format.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import numpy as np
import torch

from chatfleet.config.engine_config import ModelConfig
from chatfleet.modelfile.gguf_file import read_gguf
from chatfleet.modelfile.paths import resolve_model_path

_GGUF_LAYER_NAMES = {
    "attn_norm": "attn_norm",
    "attn_q": "q",
    "attn_k": "k",
    "attn_v": "v",
    "attn_output": "o",
    "ffn_norm": "ffn_norm",
    "ffn_gate": "gate",
    "ffn_up": "up",
    "ffn_down": "down",
}
# The tensors outside the layers: file name (without ".weight") -> canonical name.
_GGUF_TOP_NAMES = {"token_embd": "embed", "output_norm": "norm", "output": "lm_head"}
HF_TOP_NAMES = {"model.embed_tokens": "embed", "model.norm": "norm", "lm_head": "lm_head"}
HF_LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "q",
    "self_attn.k_proj": "k",
    "self_attn.v_proj": "v",
    "self_attn.o_proj": "o",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "gate",
    "mlp.up_proj": "up",
    "mlp.down_proj": "down",
}


def load_weights(model: str | None) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Read a GGUF file or a HF directory (config.json + *.safetensors)."""
    path = resolve_model_path(model)
    if os.path.isdir(path):
        return _load_hf_dir(path)
    return _load_gguf(path)


def _unpermute_rope(w: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation so we can use HF's rotate-half RoPE.

    GGUF stores each head's rows interleaved as (x0, x_half, x1, x_half+1, ...):
        gguf rows of one head: [pair0.a, pair0.b, pair1.a, pair1.b, ...]
        HF rows of one head:   [pair0.a, pair1.a, ..., pair0.b, pair1.b, ...]
    """
    rows = w.shape[0]
    return (
        w.reshape(num_heads, rows // num_heads // 2, 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def config_from_gguf(meta: dict, tensor_names: set[str]) -> ModelConfig:
    """ModelConfig from a GGUF's metadata (and tensor names: a missing `output.weight` means
    tied embeddings). ValueError for a non-Llama architecture."""
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ValueError(f"unsupported GGUF architecture {arch!r} (Llama family only)")

    def key(name: str, default=None):
        return meta.get(f"llama.{name}", default)

    num_heads = int(key("attention.head_count"))
    num_kv_heads = int(key("attention.head_count_kv", num_heads))
    return ModelConfig(
        vocab_size=int(key("vocab_size", 0) or len(meta["tokenizer.ggml.tokens"])),
        hidden_size=int(key("embedding_length")),
        num_layers=int(key("block_count")),
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        intermediate_size=int(key("feed_forward_length")),
        rms_norm_eps=float(key("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(key("rope.freq_base", 10000.0)),
        max_position_embeddings=int(key("context_length", 2048)),
        tie_word_embeddings="output.weight" not in tensor_names,
    )


def _load_gguf(path: str) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    from gguf.quants import dequantize

    meta, tensors = read_gguf(path)
    config = config_from_gguf(meta, {t.name for t in tensors})
    num_heads, num_kv_heads = config.num_heads, config.num_kv_heads
    weights: dict[str, torch.Tensor] = {}
    for t in tensors:
        array = _dequantize(t.data, t.qtype, dequantize)
        name = _canonical_gguf_name(t.name)
        if name.endswith(".q"):
            array = _unpermute_rope(array, num_heads)
        elif name.endswith(".k"):
            array = _unpermute_rope(array, num_kv_heads)
        weights[name] = torch.from_numpy(np.array(array))  # a writable copy
    return config, weights


def _dequantize(data: np.ndarray, qtype, fallback) -> np.ndarray:
    """Torch fast paths for the block formats of the default model; gguf's numpy otherwise.

    Both formats use 32-value blocks whose first bytes are an fp16 scale `d`:
        Q8_0: [d:f16][32 x int8]                   value = d * q
        Q4_1: [d:f16][m:f16][16 bytes of nibbles]  value = d * q + m, low nibbles first
    """
    from gguf import GGMLQuantizationType as Q

    if qtype not in (Q.Q8_0, Q.Q4_1):
        return np.asarray(fallback(data, qtype), dtype=np.float32)
    raw = torch.from_numpy(np.array(data))  # [rows, bytes], copied out of the memory map
    rows = raw.shape[0]
    block_bytes = 34 if qtype == Q.Q8_0 else 20
    blocks = raw.reshape(rows, -1, block_bytes)
    d = blocks[..., 0:2].contiguous().view(torch.float16).float()  # [rows, nblocks, 1]
    if qtype == Q.Q8_0:
        q = blocks[..., 2:].contiguous().view(torch.int8).float()
        out = q * d
    else:
        m = blocks[..., 2:4].contiguous().view(torch.float16).float()
        nibbles = blocks[..., 4:]
        q = torch.cat([nibbles & 0x0F, nibbles >> 4], dim=-1).float()
        out = q * d + m
    return out.reshape(rows, -1).numpy()


def _canonical_gguf_name(name: str) -> str:
    base = name.removesuffix(".weight")
    if base in _GGUF_TOP_NAMES:
        return _GGUF_TOP_NAMES[base]
    _, layer, part = base.split(".", 2)
    return f"layers.{layer}.{_GGUF_LAYER_NAMES[part]}"


def config_from_hf(hf: dict) -> ModelConfig:
    """ModelConfig from a HF `config.json` dict (LlamaForCausalLM and friends)."""
    num_heads = int(hf["num_attention_heads"])
    return ModelConfig(
        vocab_size=int(hf["vocab_size"]),
        hidden_size=int(hf["hidden_size"]),
        num_layers=int(hf["num_hidden_layers"]),
        num_heads=num_heads,
        num_kv_heads=int(hf.get("num_key_value_heads", num_heads)),
        intermediate_size=int(hf["intermediate_size"]),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
        rope_theta=float(hf.get("rope_theta", 10000.0)),
        max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        head_dim=int(hf.get("head_dim") or 0),
    )


def _iter_safetensors(path: str) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors.torch import safe_open

    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {path}")
    for file in files:
        with safe_open(os.path.join(path, file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                yield name, f.get_tensor(name)


def _load_hf_dir(path: str) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    with open(os.path.join(path, "config.json")) as f:
        config = config_from_hf(json.load(f))
    weights: dict[str, torch.Tensor] = {}
    for name, tensor in _iter_safetensors(path):
        base = name.removesuffix(".weight")
        if base in HF_TOP_NAMES:
            canonical = HF_TOP_NAMES[base]
        elif (base := base.removeprefix("model.")).startswith("layers."):
            _, layer, part = base.split(".", 2)
            if part not in HF_LAYER_NAMES:
                continue  # e.g. rotary inv_freq buffers
            canonical = f"layers.{layer}.{HF_LAYER_NAMES[part]}"
        else:
            continue
        weights[canonical] = tensor.float()
    return config, weights
