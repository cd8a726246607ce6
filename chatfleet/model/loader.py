"""Model files -> (ModelConfig, fp32 weights under canonical names).

Canonical names: `embed`, `norm`, `lm_head` (absent when tied) and per layer
`layers.{i}.{attn_norm,q,k,v,o,ffn_norm,gate,up,down}`, plus `layers.{i}.{q,k,v}_bias` for
families with q/k/v biases. Weights are [out, in] like `nn.Linear`; quantized GGUF tensors are
dequantized here and re-packed by the model into the runtime weight format.

A file is served exactly or not at all: its architecture must be in `architectures.py`, every
tensor it holds must have a place, and every tensor the model needs must be there
(UnsupportedModelError naming what is wrong).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator

import numpy as np
import torch

from chatfleet.config.engine_config import ModelConfig, RopeScaling
from chatfleet.model import architectures
from chatfleet.model.architectures import UnsupportedModelError
from chatfleet.modelfile.gguf_file import read_gguf
from chatfleet.modelfile.paths import resolve_model_path

_GGUF_LAYER_NAMES = {
    "attn_norm.weight": "attn_norm",
    "attn_q.weight": "q",
    "attn_k.weight": "k",
    "attn_v.weight": "v",
    "attn_q.bias": "q_bias",
    "attn_k.bias": "k_bias",
    "attn_v.bias": "v_bias",
    "attn_output.weight": "o",
    "ffn_norm.weight": "ffn_norm",
    "ffn_gate.weight": "gate",
    "ffn_up.weight": "up",
    "ffn_down.weight": "down",
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
_LAYER_PARTS = ("attn_norm", "q", "k", "v", "o", "ffn_norm", "gate", "up", "down")
_BIAS_PARTS = ("q_bias", "k_bias", "v_bias")
# Buffers some HF checkpoints carry that the model recomputes (RoPE's inverse frequencies).
_HF_DERIVED = ("rotary_emb.inv_freq",)


def check_tensors(config: ModelConfig, names: set[str]) -> None:
    """UnsupportedModelError unless `names` (canonical) are exactly what the model reads."""
    needed = {"embed", "norm"} | (set() if config.tie_word_embeddings else {"lm_head"})
    parts = _LAYER_PARTS + (_BIAS_PARTS if config.qkv_bias else ())
    needed |= {f"layers.{i}.{p}" for i in range(config.num_layers) for p in parts}
    # A tied model's file may still hold its output matrix (a copy of the embedding).
    unexpected = names - needed - ({"lm_head"} if config.tie_word_embeddings else set())
    missing = needed - names
    if missing or unexpected:
        raise UnsupportedModelError(
            f"the {config.family} model file does not match its config: missing tensors "
            f"{sorted(missing)[:8]}, unexpected tensors {sorted(unexpected)[:8]}"
        )


def load_weights(model: str | None) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Read a GGUF file or a HF directory (config.json + *.safetensors)."""
    path = resolve_model_path(model)
    if os.path.isdir(path):
        return _load_hf_dir(path)
    return _load_gguf(path)


def file_weight_types(model: str | None) -> dict[str, int]:
    """How many tensors of each stored type the model file holds (read from its headers)."""
    from collections import Counter

    path = resolve_model_path(model)
    if not os.path.isdir(path):
        return dict(Counter(t.qtype.name for t in read_gguf(path)[1]))
    from safetensors import safe_open

    counts: Counter[str] = Counter()
    for file in sorted(f for f in os.listdir(path) if f.endswith(".safetensors")):
        with safe_open(os.path.join(path, file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                counts[str(f.get_slice(name).get_dtype())] += 1
    return dict(counts)


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
    tied embeddings). UnsupportedModelError for an architecture or a setting not served."""
    arch = architectures.from_gguf(meta.get("general.architecture"))
    prefix = arch.gguf_name

    def key(name: str, default=None):
        return meta.get(f"{prefix}.{name}", default)

    if key("rope.scaling.type", "none") not in ("none",):
        raise UnsupportedModelError(
            f"GGUF rope scaling {key('rope.scaling.type')!r} is not supported yet"
        )

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
        family=arch.family,
        qkv_bias=arch.qkv_bias,
    )


def _load_gguf(path: str) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    from gguf.quants import dequantize

    meta, tensors = read_gguf(path)
    config = config_from_gguf(meta, {t.name for t in tensors})
    # Llama 3.1+ files store their rope scaling as one divisor per frequency.
    rope_freqs = [t for t in tensors if t.name == "rope_freqs.weight"]
    if rope_freqs:
        factors = tuple(float(f) for f in np.asarray(rope_freqs[0].data, dtype=np.float32))
        if len(factors) != config.head_dim // 2:
            raise UnsupportedModelError(f"rope_freqs has {len(factors)} factors")
        scaling = RopeScaling("factors", factors=factors)
        config = dataclasses.replace(config, rope_scaling=scaling)
        tensors = [t for t in tensors if t.name != "rope_freqs.weight"]
    permuted = architectures.from_gguf(meta.get("general.architecture")).gguf_rope_permuted
    names = {t.name: _canonical_gguf_name(t.name) for t in tensors}
    check_tensors(config, set(names.values()))
    num_heads, num_kv_heads = config.num_heads, config.num_kv_heads
    weights: dict[str, torch.Tensor] = {}
    for t in tensors:
        try:
            array = _dequantize(t.data, t.qtype, dequantize)
        except NotImplementedError:
            raise UnsupportedModelError(
                f"tensor {t.name}: GGUF weight type {t.qtype.name} is not supported"
            ) from None
        name = names[t.name]
        if permuted and name.endswith((".q", ".q_bias")):
            array = _unpermute_rope(array, num_heads)
        elif permuted and name.endswith((".k", ".k_bias")):
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
    """The canonical name, or the file's own name prefixed `?` (refused by check_tensors)."""
    if name.endswith(".weight") and name.removesuffix(".weight") in _GGUF_TOP_NAMES:
        return _GGUF_TOP_NAMES[name.removesuffix(".weight")]
    pieces = name.split(".", 2)
    if len(pieces) == 3 and pieces[0] == "blk" and pieces[2] in _GGUF_LAYER_NAMES:
        return f"layers.{pieces[1]}.{_GGUF_LAYER_NAMES[pieces[2]]}"
    return f"?{name}"


def _hf_rope(hf: dict) -> tuple[float, RopeScaling | None]:
    """(rope_theta, scaling) from `rope_parameters` (transformers 5) or `rope_theta` and
    `rope_scaling` (earlier files)."""
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return theta, None
    if kind not in ("linear", "llama3"):
        raise UnsupportedModelError(
            f"rope scaling {kind!r} is not supported (supported: linear, llama3)"
        )
    original = params.get("original_max_position_embeddings") or hf["max_position_embeddings"]
    scaling = RopeScaling(
        kind,
        float(params["factor"]),
        float(params.get("low_freq_factor", 1.0)),
        float(params.get("high_freq_factor", 4.0)),
        int(original),
    )
    return theta, scaling


def _hf_sliding_window(hf: dict) -> int | None:
    window = hf.get("sliding_window")
    if "use_sliding_window" in hf and not hf["use_sliding_window"]:
        return None  # Qwen2 writes a window it does not use
    return int(window) if window else None


def config_from_hf(hf: dict) -> ModelConfig:
    """ModelConfig from a HF `config.json` dict; UnsupportedModelError for an architecture or
    a setting chatfleet would not compute exactly."""
    arch = architectures.from_hf(hf.get("architectures"))
    unsupported = {
        "hidden_act": hf.get("hidden_act", "silu") != "silu",
        "mlp_bias": bool(hf.get("mlp_bias")),
        "attention_bias": bool(hf.get("attention_bias")),  # also an output bias in Llama
    }
    for name, is_set in unsupported.items():
        if is_set:
            raise UnsupportedModelError(f"{arch.hf_name} with {name}={hf[name]!r} is not supported")
    num_heads = int(hf["num_attention_heads"])
    theta, scaling = _hf_rope(hf)
    return ModelConfig(
        vocab_size=int(hf["vocab_size"]),
        hidden_size=int(hf["hidden_size"]),
        num_layers=int(hf["num_hidden_layers"]),
        num_heads=num_heads,
        num_kv_heads=int(hf.get("num_key_value_heads", num_heads)),
        intermediate_size=int(hf["intermediate_size"]),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
        rope_theta=theta,
        max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        head_dim=int(hf.get("head_dim") or 0),
        family=arch.family,
        qkv_bias=arch.qkv_bias,
        rope_scaling=scaling,
        sliding_window=_hf_sliding_window(hf),
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
        if name.endswith(_HF_DERIVED):
            continue
        weights[_canonical_hf_name(name)] = tensor.float()
    check_tensors(config, set(weights))
    tied_copy = weights.pop("lm_head", None) if config.tie_word_embeddings else None
    if tied_copy is not None and not torch.equal(tied_copy, weights["embed"]):
        raise UnsupportedModelError("tie_word_embeddings is set but lm_head differs from it")
    return config, weights


def _canonical_hf_name(name: str) -> str:
    """The canonical name, or the file's own name prefixed `?` (refused by check_tensors)."""
    base, _, kind = name.rpartition(".")
    if kind == "weight" and base in HF_TOP_NAMES:
        return HF_TOP_NAMES[base]
    pieces = base.removeprefix("model.").split(".", 2)
    if len(pieces) == 3 and pieces[0] == "layers" and pieces[2] in HF_LAYER_NAMES:
        part = HF_LAYER_NAMES[pieces[2]]
        if kind == "weight":
            return f"layers.{pieces[1]}.{part}"
        if kind == "bias" and part in ("q", "k", "v"):
            return f"layers.{pieces[1]}.{part}_bias"
    return f"?{name}"
