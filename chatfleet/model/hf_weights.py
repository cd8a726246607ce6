"""HF directories (config.json + *.safetensors) -> (ModelConfig, LazyWeights): the config
with every setting checked (rope scaling included), the tensors under canonical names."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable

import torch

from chatfleet.config.engine_config import ModelConfig, RopeScaling
from chatfleet.model import architectures
from chatfleet.model.architectures import UnsupportedModelError
from chatfleet.model.lazy_weights import LazyWeights, check_tensors
from chatfleet.model.rope import yarn_mscale
from chatfleet.model.weight_rows import WeightRows

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
# Buffers some HF checkpoints carry that the model recomputes (RoPE's inverse frequencies).
_HF_DERIVED = ("rotary_emb.inv_freq",)


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


def load_hf_dir(path: str) -> tuple[ModelConfig, LazyWeights]:
    from safetensors import safe_open

    with open(os.path.join(path, "config.json")) as f:
        config = config_from_hf(json.load(f))
    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {path}")
    matrices: dict[str, WeightRows] = {}
    vectors: dict[str, Callable[[], torch.Tensor]] = {}
    stored: dict[str, str] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        with safe_open(os.path.join(path, file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                if name.endswith(_HF_DERIVED):
                    continue
                canonical = _canonical_hf_name(name)
                shape = f.get_slice(name).get_shape()
                shapes[canonical] = tuple(shape)
                stored[canonical] = str(f.get_slice(name).get_dtype())
                read = _safetensors_reader(os.path.join(path, file), name)
                if len(shape) == 2:
                    matrices[canonical] = WeightRows(
                        (shape[0], shape[1]), ((shape[0], read, None),)
                    )
                else:
                    vectors[canonical] = functools.partial(read, None, None)
    check_tensors(config, shapes)
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
