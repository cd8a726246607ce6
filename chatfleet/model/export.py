"""Write a model as a HF directory (config.json, model.safetensors, tokenizer files).

Peers that cannot read GGUF (vLLM's CPU build, transformers without gguf) get exactly the
weights chatfleet serves; chatfleet reads the directory back with `--model DIR`.
"""

from __future__ import annotations

import json
import os

import torch

from chatfleet.model.architectures import ARCHITECTURES, UnsupportedModelError
from chatfleet.model.hf_weights import HF_LAYER_NAMES, HF_TOP_NAMES
from chatfleet.model.loader import load_weights
from chatfleet.model.models.llama import LlamaForCausalLM
from chatfleet.modelfile.tokenizer import Tokenizer

# Canonical name -> HF module name: the loader's mappings, inverted.
_HF_TOP_NAMES = {canonical: hf for hf, canonical in HF_TOP_NAMES.items()}
_HF_LAYER_NAMES = {part: hf for hf, part in HF_LAYER_NAMES.items()}


def _hf_name(name: str) -> str:
    if name in _HF_TOP_NAMES:
        return f"{_HF_TOP_NAMES[name]}.weight"
    _, layer, part = name.split(".")
    if part.endswith("_bias"):
        return f"model.layers.{layer}.{_HF_LAYER_NAMES[part.removesuffix('_bias')]}.bias"
    return f"model.layers.{layer}.{_HF_LAYER_NAMES[part]}.weight"


def held_hf_weights(model: LlamaForCausalLM) -> dict[str, torch.Tensor]:
    """HF name -> each matrix as a loaded model holds it (fp32), for a transformers reference."""
    return {_hf_name(name): matrix for name, matrix in model.held_matrices().items()}


def export_hf_dir(model: str | None, out_dir: str, dtype: torch.dtype = torch.float32) -> None:
    """Dequantized weights (canonical names are already in HF's rotate-half Q/K layout)."""
    from safetensors.torch import save_file

    config, weights = load_weights(model)
    (arch,) = [a for a in ARCHITECTURES if a.family == config.family]
    if config.rope_scaling is not None and config.rope_scaling.kind == "factors":
        # HF configs name a recipe, not a list of divisors.
        raise UnsupportedModelError("a GGUF's rope_freqs cannot be written as a HF config")
    tokenizer = Tokenizer.from_model_path(model)
    os.makedirs(out_dir, exist_ok=True)
    tensors = {_hf_name(k): v.to(dtype).contiguous() for k, v in weights.items()}
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    eos = tokenizer.eos_token_ids[0]
    hf_config = {
        "architectures": [arch.hf_name],
        "model_type": arch.family,
        "hidden_act": "silu",
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_attention_heads": config.num_heads,
        "num_hidden_layers": config.num_layers,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "max_position_embeddings": config.max_position_embeddings,
        "vocab_size": config.vocab_size,
        "tie_word_embeddings": config.tie_word_embeddings,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": eos,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "sliding_window": config.sliding_window,
    }
    if (s := config.rope_scaling) is not None:
        hf_config["rope_scaling"] = {
            "rope_type": s.kind,
            "factor": s.factor,
            "original_max_position_embeddings": s.original_max_position_embeddings,
        } | (
            {"beta_fast": s.beta_fast, "beta_slow": s.beta_slow}
            | {"attention_factor": s.attention_factor, "truncate": s.truncate}
            if s.kind == "yarn"
            else {"low_freq_factor": s.low_freq_factor, "high_freq_factor": s.high_freq_factor}
        )
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2)
    tokenizer.save_hf(out_dir)
