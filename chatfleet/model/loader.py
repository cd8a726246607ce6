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
import functools
import json
import math
import os
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

from chatfleet.config.engine_config import ModelConfig, RopeScaling
from chatfleet.model import architectures
from chatfleet.model.architectures import UnsupportedModelError
from chatfleet.model.weight_rows import Codes, WeightRows
from chatfleet.modelfile import gguf_blocks
from chatfleet.modelfile.gguf_file import GGUFTensor, read_gguf
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


class LazyWeights(Mapping[str, torch.Tensor]):
    """Canonical name -> fp32 tensor, read from the (memory-mapped) file each time it is asked
    for, and matrices also as blocks of rows (`rows`): the model turns each into its runtime
    format as it builds, so a quantized file never becomes a whole fp32 model, nor a large
    matrix a whole fp32 copy, in memory."""

    def __init__(
        self,
        matrices: dict[str, WeightRows],
        vectors: dict[str, Callable[[], torch.Tensor]],
        stored_types: dict[str, str],
    ) -> None:
        self._matrices, self._vectors, self._types = matrices, vectors, stored_types

    def __getitem__(self, name: str) -> torch.Tensor:
        if name in self._matrices:
            return self._matrices[name].whole()
        return self._vectors[name]()

    def rows(self, name: str) -> WeightRows:
        return self._matrices[name]

    def __contains__(self, name: object) -> bool:  # Mapping's would read the tensor
        return name in self._matrices or name in self._vectors

    def __iter__(self) -> Iterator[str]:
        return iter([*self._matrices, *self._vectors])

    def __len__(self) -> int:
        return len(self._matrices) + len(self._vectors)

    def num_elements(self) -> int:
        matrices = sum(math.prod(m.shape) for m in self._matrices.values())
        return matrices + sum(v().numel() for v in self._vectors.values())

    def stored_type_counts(self) -> dict[str, int]:
        """How many tensors the file stores in each type (GGUF weight type, safetensors dtype)."""
        return dict(Counter(self._types[name] for name in self))


def load_weights(model: str | None) -> tuple[ModelConfig, LazyWeights]:
    """Read a GGUF file or a HF directory (config.json + *.safetensors): its config now (and
    every check on its tensors' names and types), its tensors when asked for."""
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
    tied embeddings). UnsupportedModelError for an architecture or a setting not served."""
    arch = architectures.from_gguf(meta.get("general.architecture"))
    prefix = arch.gguf_name

    def key(name: str, default=None):
        return meta.get(f"{prefix}.{name}", default)

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
        rope_scaling=_gguf_rope_scaling(key),
    )


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


def _load_gguf(path: str) -> tuple[ModelConfig, LazyWeights]:
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
    heads = {"q": config.num_heads, "k": config.num_kv_heads}

    def matrix(t: GGUFTensor) -> WeightRows:
        rows = t.shape[0]
        # Q and K rows are interleaved per head (llama.cpp's layout): blocks hold whole heads.
        unpermute = permuted and names[t.name].rsplit(".", 1)[-1] in heads

        def in_order(array: np.ndarray) -> torch.Tensor:  # rows of whole heads when unpermuted
            if unpermute:
                array = _unpermute_rope(array, len(array) // config.head_dim)
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

        align = config.head_dim if unpermute else 1
        encoder = encode if gguf_blocks.encodable(t.qtype) else None
        return WeightRows((rows, _decoded_cols(t.data, t.qtype)), ((rows, read, encoder),), align)

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
    matrices = {names[t.name]: matrix(t) for t in tensors if len(t.shape) == 2}
    vectors = {names[t.name]: vector(t) for t in tensors if len(t.shape) != 2}
    stored = {names[t.name]: t.qtype.name for t in tensors}
    return config, LazyWeights(matrices, vectors, stored)


def _decoded_cols(data: np.ndarray, qtype) -> int:
    from gguf.constants import GGML_QUANT_SIZES

    if data.dtype in (np.float16, np.float32):
        return data.shape[1]
    block, block_bytes = GGML_QUANT_SIZES[qtype]
    return data.shape[1] // block_bytes * block


def _dequantize_rows(data: np.ndarray, qtype, fallback) -> np.ndarray:
    """Torch fast paths for the block formats of the default model; gguf's numpy otherwise.

    Both formats use 32-value blocks whose first bytes are an fp16 scale `d`:
        Q8_0: [d:f16][32 x int8]                   value = d * q
        Q4_1: [d:f16][m:f16][16 bytes of nibbles]  value = d * q + m, low nibbles first
    """
    from gguf import GGMLQuantizationType as Q

    if data.dtype == np.float16:
        return data.astype(np.float32)
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
    if kind not in ("linear", "llama3", "yarn"):
        raise UnsupportedModelError(
            f"rope scaling {kind!r} is not supported (supported: linear, llama3, yarn)"
        )
    original = params.get("original_max_position_embeddings") or hf["max_position_embeddings"]
    if kind == "yarn":
        return theta, _yarn_scaling(params, int(original), hf["max_position_embeddings"])
    scaling = RopeScaling(
        kind,
        float(params["factor"]),
        float(params.get("low_freq_factor", 1.0)),
        float(params.get("high_freq_factor", 4.0)),
        int(original),
    )
    return theta, scaling


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature for a context stretched `factor` times."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _yarn_scaling(params: dict, original: int, max_positions: int) -> RopeScaling:
    """YaRN as transformers reads it: the factor defaults to max / original positions; the
    attention factor to yarn_mscale(factor), or a ratio of two when mscale and mscale_all_dim
    are both given (DeepSeek's form)."""
    factor = float(params.get("factor") or max_positions / original)
    attention = params.get("attention_factor")
    if attention is None:
        mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            attention = yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
        else:
            attention = yarn_mscale(factor)
    return RopeScaling(
        "yarn",
        factor,
        original_max_position_embeddings=original,
        beta_fast=float(params.get("beta_fast") or 32.0),
        beta_slow=float(params.get("beta_slow") or 1.0),
        attention_factor=float(attention),
        truncate=bool(params.get("truncate", True)),
    )


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


def _load_hf_dir(path: str) -> tuple[ModelConfig, LazyWeights]:
    from safetensors import safe_open

    with open(os.path.join(path, "config.json")) as f:
        config = config_from_hf(json.load(f))
    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {path}")
    matrices: dict[str, WeightRows] = {}
    vectors: dict[str, Callable[[], torch.Tensor]] = {}
    stored: dict[str, str] = {}
    for file in files:
        with safe_open(os.path.join(path, file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                if name.endswith(_HF_DERIVED):
                    continue
                canonical = _canonical_hf_name(name)
                shape = f.get_slice(name).get_shape()
                stored[canonical] = str(f.get_slice(name).get_dtype())
                read = _safetensors_reader(os.path.join(path, file), name)
                if len(shape) == 2:
                    matrices[canonical] = WeightRows(
                        (shape[0], shape[1]), ((shape[0], read, None),)
                    )
                else:
                    vectors[canonical] = functools.partial(read, None, None)
    check_tensors(config, {*matrices, *vectors})
    if config.tie_word_embeddings and "lm_head" in matrices:
        head = matrices.pop("lm_head")  # the embedding serves as the head
        if not torch.equal(head.whole(), matrices["embed"].whole()):
            raise UnsupportedModelError("tie_word_embeddings is set but lm_head differs from it")
    return config, LazyWeights(matrices, vectors, stored)


def _safetensors_reader(file: str, name: str) -> Callable[[int | None, int | None], torch.Tensor]:
    """Rows [start, stop) of a tensor, fp32 (all of it for None, None)."""

    def read(start: int | None, stop: int | None) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(file, framework="pt") as f:
            return f.get_slice(name)[start:stop].float()

    return read


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
