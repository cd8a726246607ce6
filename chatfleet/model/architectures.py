"""The model families chatfleet serves and how each differs from Llama, as data: the loader
looks a model file's architecture up here, and refuses any other by name.

    family    config.json architectures  GGUF general.architecture  differences
    llama     LlamaForCausalLM            llama                      (the reference)
    mistral   MistralForCausalLM          llama (its GGUFs say so)   a sliding window, if set
    qwen2     Qwen2ForCausalLM            qwen2                      q/k/v biases; GGUF Q/K
                                                                     rows not permuted
"""

from __future__ import annotations

from dataclasses import dataclass

from chatfleet.errors import UnsupportedModelError

__all__ = ["ARCHITECTURES", "Architecture", "UnsupportedModelError", "from_gguf", "from_hf"]


@dataclass(frozen=True)
class Architecture:
    family: str
    hf_name: str  # config.json "architectures"[0]
    gguf_name: str | None  # GGUF "general.architecture" (None: its files use another family's)
    qkv_bias: bool = False  # the q, k and v projections carry a bias
    # llama.cpp's converter interleaves each head's Q/K rows for its rope kernel; undone at load
    gguf_rope_permuted: bool = True


ARCHITECTURES = (
    Architecture("llama", "LlamaForCausalLM", "llama"),
    Architecture("mistral", "MistralForCausalLM", None),
    Architecture("qwen2", "Qwen2ForCausalLM", "qwen2", qkv_bias=True, gguf_rope_permuted=False),
)


def from_hf(names: object) -> Architecture:
    """The family of a config.json's `architectures` list; UnsupportedModelError otherwise."""
    name = names[0] if isinstance(names, list) and names else names
    for arch in ARCHITECTURES:
        if arch.hf_name == name:
            return arch
    supported = ", ".join(a.hf_name for a in ARCHITECTURES)
    raise UnsupportedModelError(f"architecture {name!r} is not supported (supported: {supported})")


def from_gguf(name: object) -> Architecture:
    """The family of a GGUF's `general.architecture`; UnsupportedModelError otherwise."""
    for arch in ARCHITECTURES:
        if arch.gguf_name == name:
            return arch
    supported = ", ".join(sorted({a.gguf_name for a in ARCHITECTURES if a.gguf_name}))
    raise UnsupportedModelError(
        f"GGUF architecture {name!r} is not supported (supported: {supported})"
    )
