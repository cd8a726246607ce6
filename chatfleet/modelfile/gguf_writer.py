"""Write a transformers model as a GGUF file the way llama.cpp's converter lays it out (tensor
names, Llama's Q/K row interleave, Llama 3.1's `rope_freqs`), with the gguf package's writer
and quantizers. The tokenizer metadata is copied from another GGUF (by default the default
model's: random-weight models built for tests and benchmarks share its vocabulary).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, RopeScalingType, quants

from chatfleet.modelfile.gguf_file import read_gguf
from chatfleet.modelfile.paths import default_model_path

_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_TOP = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def _interleave(w: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's permutation of a Llama Q/K projection: each head's halves interleaved."""
    return (
        w.reshape(num_heads, 2, w.shape[0] // num_heads // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def gguf_name(name: str) -> str:
    if name in _TOP:
        return _TOP[name]
    _, _, layer, rest = name.split(".", 3)
    return f"blk.{layer}.{_LAYER[rest]}"


def quantized(array: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """What a tensor of `qtype` holds once read back: quantized, then dequantized (fp32)."""
    if qtype == GGMLQuantizationType.F32 or array.ndim == 1:
        return array
    return quants.dequantize(quants.quantize(array, qtype), qtype)


def _add_rope_scaling(writer: GGUFWriter, c: Any) -> None:
    """Linear and YaRN scaling as llama.cpp's converter writes them (llama3 scaling is the
    caller's `rope_factors` tensor)."""
    kind = c.rope_parameters.get("rope_type", "default")
    if kind in ("linear", "yarn"):
        writer.add_rope_scaling_type(RopeScalingType(kind))
        writer.add_rope_scaling_factor(c.rope_parameters["factor"])
        original = c.rope_parameters.get("original_max_position_embeddings")
        writer.add_rope_scaling_orig_ctx_len(original or c.max_position_embeddings)


def write_gguf(
    model: Any,  # a transformers PreTrainedModel
    arch: str,
    path: str,
    qtype: GGMLQuantizationType = GGMLQuantizationType.F32,
    rope_factors: np.ndarray | None = None,
    tokenizer_from: str | None = None,
    encoded: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Matrices in `qtype`, vectors (norms, biases) in F32, as llama.cpp writes them.

    `encoded` gives some matrices' bytes in `qtype` directly (by transformers name), for types
    gguf has no quantizer for (the K-quants): the caller made the model's weights what those
    bytes decode to."""
    c = model.config
    writer = GGUFWriter(path, arch)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_rope_freq_base(c.rope_parameters["rope_theta"])
    _add_rope_scaling(writer, c)
    _add_tokenizer(writer, tokenizer_from or default_model_path())
    if rope_factors is not None:
        writer.add_tensor("rope_freqs.weight", rope_factors.astype(np.float32))
    written: set[int] = set()
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in written:
            continue  # a tied head: llama.cpp's converter writes the embedding only
        written.add(tensor.data_ptr())
        array = tensor.float().numpy()
        if arch == "llama" and ".q_proj." in name:
            array = _interleave(array, c.num_attention_heads)
        elif arch == "llama" and ".k_proj." in name:
            array = _interleave(array, c.num_key_value_heads)
        if encoded is not None and name in encoded:
            writer.add_tensor(gguf_name(name), encoded[name], raw_dtype=qtype)
        elif array.ndim == 1 or qtype == GGMLQuantizationType.F32:
            writer.add_tensor(gguf_name(name), np.ascontiguousarray(array))
        else:
            data = quants.quantize(np.ascontiguousarray(array), qtype)
            writer.add_tensor(gguf_name(name), data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _add_tokenizer(writer: GGUFWriter, gguf_path: str) -> None:
    """The vocabulary, its ids and the chat template: the `tokenizer.*` keys of a GGUF file."""
    meta, _ = read_gguf(gguf_path, with_tensors=False)
    for key, value in meta.items():
        if not key.startswith("tokenizer."):
            continue
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_array(key, value)


# Each K-quant's 256-value super-block: its size in bytes and where its fp16 scales sit, with a
# range for them that keeps weights near the model's own scale (see ggml-common.h).
K_QUANTS = {
    GGMLQuantizationType.Q4_K: (144, {0: (2e-4, 5e-4), 2: (1e-3, 3e-3)}),  # d, dmin
    GGMLQuantizationType.Q5_K: (176, {0: (1e-4, 2.5e-4), 2: (1e-3, 3e-3)}),  # d, dmin
    GGMLQuantizationType.Q6_K: (210, {208: (1e-4, 2e-4)}),  # d (last)
}


def random_k_quants(
    model: Any, qtype: GGMLQuantizationType, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Random super-blocks in `qtype` for every matrix of a transformers model (any bytes are a
    valid K-quant once its fp16 scales are sane), with the model's weights set to what gguf
    decodes them to, for `write_gguf(..., encoded=)`: the model is then exactly the file's.
    (gguf has no K-quant quantizer; llama.cpp's is a C++ build.)"""
    import torch
    from gguf.quants import dequantize

    block_bytes, scales = K_QUANTS[qtype]
    encoded = {}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim != 2:
                continue
            rows, cols = param.shape
            raw = rng.integers(0, 256, (rows, cols // 256, block_bytes), dtype=np.uint8)
            for at, (lo, hi) in scales.items():
                d = rng.uniform(lo, hi, raw.shape[:2]).astype(np.float16)
                raw[..., at : at + 2] = d.view(np.uint8).reshape(*raw.shape[:2], 2)
            raw = raw.reshape(rows, -1)
            encoded[name] = raw
            param.copy_(torch.from_numpy(dequantize(raw, qtype).reshape(rows, cols)))
    # A tied head is the embedding's parameter under a second name in the state dict.
    by_data = {p.data_ptr(): name for name, p in model.named_parameters() if name in encoded}
    for name, tensor in model.state_dict().items():
        if name not in encoded and tensor.data_ptr() in by_data:
            encoded[name] = encoded[by_data[tensor.data_ptr()]]
    return encoded
