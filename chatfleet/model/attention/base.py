"""Paged attention backends.

The KV cache of one layer is a tensor [2, num_blocks, block_size, num_kv_heads, width] (K then
V; kv_format says what a head holds). Writing goes through the slot mapping and is shared by
all backends; backends differ only in how they read it back through the block tables.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from chatfleet.model.attention import kv_format
from chatfleet.model.forward_context import ForwardContext
from chatfleet.model.rope import apply_rope


def write_kv(
    kv_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Store this step's K/V [T, kv_heads, D] at their slots."""
    _, num_blocks, block_size, kv_heads, width = kv_cache.shape
    flat = kv_cache.view(2, num_blocks * block_size, kv_heads, width)
    flat[0].index_copy_(0, slot_mapping, kv_format.encode(k, flat.dtype))
    flat[1].index_copy_(0, slot_mapping, kv_format.encode(v, flat.dtype))


class AttentionBackend(ABC):
    """Computes softmax(q k^T / sqrt(d)) v over each request's cached keys (causal)."""

    name: str = "base"

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = head_dim**-0.5

    def rope_write_kv(
        self,
        qkv: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: torch.Tensor,
        ctx: ForwardContext,
    ) -> torch.Tensor:
        """qkv [T, (H + 2 KVH) D] from the fused projection, cos/sin [T, D] -> RoPE'd queries
        [T, H, D]; RoPE'd keys and the values go into the cache at ctx.slot_mapping."""
        num_tokens, dim = qkv.shape[0], self.head_dim
        # q and k get RoPE together: view them as (num_heads + num_kv_heads) heads.
        qk_width = (self.num_heads + self.num_kv_heads) * dim
        qk = apply_rope(qkv[:, :qk_width].view(num_tokens, -1, dim), cos[:, None], sin[:, None])
        v = qkv[:, qk_width:].view(num_tokens, self.num_kv_heads, dim)
        write_kv(kv_cache, qk[:, self.num_heads :], v, ctx.slot_mapping)
        return qk[:, : self.num_heads]

    def build_metadata(self, ctx: ForwardContext, block_size: int) -> Any:
        """Precompute per-step indices and masks (called once per step, not per layer)."""
        return None

    @abstractmethod
    def forward(self, q: torch.Tensor, kv_cache: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """q: [T, num_heads, head_dim] -> [T, num_heads * head_dim]. The cache already holds
        this step's keys and values."""
