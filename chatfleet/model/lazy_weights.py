"""What a model file holds, under canonical names, read when asked for.

Canonical names: `embed`, `norm`, `lm_head` (absent when tied) and per layer
`layers.{i}.{attn_norm,q,k,v,o,ffn_norm,gate,up,down}`, plus `layers.{i}.{q,k,v}_bias` for
families with q/k/v biases. Weights are [out, in] like `nn.Linear`.

A file is served exactly or not at all: every tensor it holds must have a place, every tensor
the model needs must be there, each of the size its config says (UnsupportedModelError
naming what is wrong).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator, Mapping

import torch

from chatfleet.config.engine_config import ModelConfig
from chatfleet.model.architectures import UnsupportedModelError
from chatfleet.model.weight_rows import WeightRows

_LAYER_PARTS = ("attn_norm", "q", "k", "v", "o", "ffn_norm", "gate", "up", "down")
_BIAS_PARTS = ("q_bias", "k_bias", "v_bias")


def check_tensors(config: ModelConfig, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """UnsupportedModelError unless `shapes` (canonical name -> [out, in] or [n]) are exactly
    the tensors the model reads, each as large as the config says."""
    names = set(shapes)
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
    # NOTE: the kernels take their sizes from the tensors, the rest of the engine (KV cache,
    # sampler, vocabulary checks) from the config: a file that disagrees with its config
    # would run, wrongly, rather than fail.
    expected = _expected_shapes(config)
    wrong = [
        f"{name} {tuple(shape)} (config: {expected[name.rpartition('.')[2]]})"
        for name, shape in sorted(shapes.items())
        if tuple(shape) != expected[name.rpartition(".")[2]]
    ]
    if wrong:
        raise UnsupportedModelError(
            f"the {config.family} model file does not match its config: tensor shapes "
            + ", ".join(wrong[:8])
        )


def _expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Each part's shape, by the last component of its canonical name."""
    hidden, inner = config.hidden_size, config.intermediate_size
    q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    embed = (config.vocab_size, hidden)
    return {
        "embed": embed,
        "lm_head": embed,
        "norm": (hidden,),
        "attn_norm": (hidden,),
        "ffn_norm": (hidden,),
        "q": (q, hidden),
        "k": (kv, hidden),
        "v": (kv, hidden),
        "o": (hidden, q),
        "gate": (inner, hidden),
        "up": (inner, hidden),
        "down": (hidden, inner),
        "q_bias": (q,),
        "k_bias": (kv,),
        "v_bias": (kv,),
    }


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
