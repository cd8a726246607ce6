"""GGUF files -> (ModelConfig, LazyWeights): the config from the metadata (llama.cpp's keys),
the tensors under canonical names with llama.cpp's Q/K row interleave undone, block formats
the int8 kernel holds as they are given as codes (modelfile/gguf_blocks.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from gguf.constants import GGMLQuantizationType as Q

from chatfleet.config.engine_config import ModelConfig, RopeScaling
from chatfleet.model import architectures
from chatfleet.model.architectures import UnsupportedModelError
from chatfleet.model.lazy_weights import LazyWeights, check_tensors
from chatfleet.model.rope import yarn_mscale
from chatfleet.model.weight_rows import Codes, WeightRows
from chatfleet.modelfile import gguf_blocks
from chatfleet.modelfile.gguf_file import GGUFTensor, read_gguf

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

    num_heads = int(key("attention.head_count"))
    num_kv_heads = int(key("attention.head_count_kv", num_heads))
    config = ModelConfig(
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
        rope_scaling=_gguf_rope_scaling(key),
        # Set where a head is not hidden / heads wide (Mistral Nemo: 128 of 5120 / 32).
        head_dim=int(key("attention.key_length", 0)),
    )
    # Keys and values of other widths, or RoPE on part of each head, are not served.
    widths = {
        "attention.value_length": key("attention.value_length", config.head_dim),
        "rope.dimension_count": key("rope.dimension_count", config.head_dim),
    }
    for name, width in widths.items():
        if int(width) != config.head_dim:
            raise UnsupportedModelError(
                f"GGUF {prefix}.{name} {width} with heads {config.head_dim} wide is not supported"
            )
    return config


def _gguf_rope_scaling(key: Callable[..., Any]) -> RopeScaling | None:
    """`rope.scaling.*` as llama.cpp's converter writes it: "linear" or "yarn" with a factor
    and the original context (llama3 scaling comes as the `rope_freqs` tensor instead)."""
    kind = key("rope.scaling.type", "none")
    if kind == "none":
        return None
    if kind not in ("linear", "yarn"):
        raise UnsupportedModelError(
            f"GGUF rope scaling {kind!r} is not supported (supported: linear, yarn)"
        )
    unread = [
        k
        for k in ("attn_factor", "yarn_ext_factor", "yarn_log_multiplier")
        if key(f"rope.scaling.{k}")
    ]
    if unread:
        raise UnsupportedModelError(
            f"GGUF rope scaling with rope.scaling.{unread[0]} is not supported"
        )
    factor = float(key("rope.scaling.factor"))
    original = int(key("rope.scaling.original_context_length", key("context_length")))
    if kind == "linear":
        return RopeScaling("linear", factor, original_max_position_embeddings=original)
    # llama.cpp multiplies YaRN's temperature by yarn_attn_factor (1 unless set).
    attention = float(key("rope.scaling.yarn_attn_factor", 1.0)) * yarn_mscale(factor)
    return RopeScaling(
        "yarn",
        factor,
        original_max_position_embeddings=original,
        beta_fast=float(key("rope.scaling.yarn_beta_fast", 32.0)),
        beta_slow=float(key("rope.scaling.yarn_beta_slow", 1.0)),
        attention_factor=attention,
    )


def load_gguf(path: str) -> tuple[ModelConfig, LazyWeights]:
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
    check_tensors(config, {names[t.name]: t.shape for t in tensors})

    def vector(t: GGUFTensor) -> Callable[[], torch.Tensor]:
        def read() -> torch.Tensor:
            data = np.asarray(t.data).reshape(1, -1)
            return torch.from_numpy(np.array(_dequantize_rows(data, t.qtype, dequantize)[0]))

        return read

    for t in tensors:
        try:  # one row now: a type gguf cannot read fails at load, not mid-build
            dequantize(np.asarray(t.data)[:1], t.qtype)
        except NotImplementedError:
            raise UnsupportedModelError(
                f"tensor {t.name}: GGUF weight type {t.qtype.name} is not supported"
            ) from None
    rope_parts = ("q", "k") if permuted else ()
    matrices = {
        names[t.name]: _matrix(t, config.head_dim, names[t.name].rsplit(".", 1)[-1] in rope_parts)
        for t in tensors
        if len(t.shape) == 2
    }
    vectors = {names[t.name]: vector(t) for t in tensors if len(t.shape) != 2}
    stored = {names[t.name]: t.qtype.name for t in tensors}
    return config, LazyWeights(matrices, vectors, stored)


def _matrix(t: GGUFTensor, head_dim: int, unpermute: bool) -> WeightRows:
    """A matrix read a block of rows at a time: as fp32, or as codes where gguf_blocks reads
    its type; with `unpermute` (Q and K, interleaved per head in llama.cpp's layout) blocks
    hold whole heads."""
    from gguf.quants import dequantize

    rows = t.shape[0]

    def in_order(array: np.ndarray) -> torch.Tensor:  # rows of whole heads when unpermuted
        if unpermute:
            array = _unpermute_rope(array, len(array) // head_dim)
        return torch.from_numpy(np.require(array, requirements=["C", "W"]))

    def read(start: int, stop: int) -> torch.Tensor:
        block = _dequantize_rows(np.asarray(t.data[start:stop]), t.qtype, dequantize)
        if stop == rows:
            t.release()
        return in_order(np.asarray(block, dtype=np.float32))

    def encode(start: int, stop: int) -> Codes:
        encoded = gguf_blocks.encode_rows(np.asarray(t.data[start:stop]), t.qtype)
        if stop == rows:
            t.release()
        codes, scale, zero = (in_order(a) for a in encoded)
        return codes, scale, zero

    align = head_dim if unpermute else 1
    shape = (rows, _decoded_cols(t.data, t.qtype))
    if gguf_blocks.encodable(t.qtype):
        return WeightRows(shape, ((rows, read, encode),), align, gguf_blocks.code_bits(t.qtype))
    # Other block formats are decoded and fitted to 8-bit codes; float ones may sit on a
    # 4-bit grid (a file written from 4-bit weights), which only all their rows can tell.
    bits = None if t.qtype in (Q.F32, Q.F16, Q.BF16) else 8
    return WeightRows(shape, ((rows, read, None),), align, bits)


def _decoded_cols(data: np.ndarray, qtype) -> int:
    from gguf.constants import GGML_QUANT_SIZES

    if data.dtype in (np.float16, np.float32):
        return data.shape[1]
    block, block_bytes = GGML_QUANT_SIZES[qtype]
    return data.shape[1] // block_bytes * block


_DECODE_ROWS = 128


def _dequantize_rows(data: np.ndarray, qtype, fallback) -> np.ndarray:
    """fp32 [rows, cols]: block formats from their codes (scale * code + zero, which for these
    formats is gguf's own arithmetic, exact in fp32), F16 widened, gguf's numpy otherwise."""
    if data.dtype == np.float16:
        return data.astype(np.float32)
    if not gguf_blocks.exact_in_fp32(qtype):
        # gguf's numpy decoders hold several temporaries the size of their input's values:
        # a few rows at a time, they stay small beside the block.
        out = np.empty((len(data), _decoded_cols(data, qtype)), dtype=np.float32)
        for start in range(0, len(data), _DECODE_ROWS):
            out[start : start + _DECODE_ROWS] = fallback(data[start : start + _DECODE_ROWS], qtype)
        return out
    codes, scale, zero = gguf_blocks.encode_rows(data, qtype)
    return (codes * scale[..., None] + zero[..., None]).reshape(len(data), -1)


def _canonical_gguf_name(name: str) -> str:
    """The canonical name, or the file's own name prefixed `?` (refused by check_tensors)."""
    if name.endswith(".weight") and name.removesuffix(".weight") in _GGUF_TOP_NAMES:
        return _GGUF_TOP_NAMES[name.removesuffix(".weight")]
    pieces = name.split(".", 2)
    if len(pieces) == 3 and pieces[0] == "blk" and pieces[2] in _GGUF_LAYER_NAMES:
        return f"layers.{pieces[1]}.{_GGUF_LAYER_NAMES[pieces[2]]}"
    return f"?{name}"
