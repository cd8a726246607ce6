"""CPU backend: decodes through a small C++ kernel that reads K/V straight from the paged
cache (no gather, no padding to the longest request); prefill chunks use SDPA like `sdpa`.

The kernel is built on first use (chatfleet.model.kernels); if it cannot be built,
`load_kernel()` returns None and the engine uses the `sdpa` backend instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from chatfleet.model import kernels
from chatfleet.model.attention.torch_sdpa import SdpaAttention, SdpaMetadata
from chatfleet.model.forward_context import ForwardContext


def load_kernel() -> Any | None:
    return kernels.load("paged_attention")


@dataclass
class CpuPagedMetadata(SdpaMetadata):
    decode_block_tables: torch.Tensor | None = None  # [Bd, max_blocks]
    decode_seq_lens: torch.Tensor | None = None  # [Bd]


class CpuPagedAttention(SdpaAttention):
    name = "cpu"

    def build_metadata(self, ctx: ForwardContext, block_size: int) -> CpuPagedMetadata:
        nd = ctx.num_decodes
        # Decodes never use the gathered slots: build only the prefill part of the metadata.
        prefill_only = SdpaAttention.build_metadata(self, _without_decodes(ctx), block_size)
        meta = CpuPagedMetadata(None, None, [])
        for item in prefill_only.prefills:
            item.start += sum(ctx.query_lens[:nd])
            meta.prefills.append(item)
        if nd:
            meta.decode_block_tables = ctx.block_tables[:nd]
            meta.decode_seq_lens = torch.tensor(ctx.seq_lens[:nd], dtype=torch.long)
        return meta

    def rope_write_kv(
        self,
        qkv: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: torch.Tensor,
        ctx: ForwardContext,
    ) -> torch.Tensor:
        if qkv.dtype != torch.float32:
            return super().rope_write_kv(qkv, cos, sin, kv_cache, ctx)
        kernel = load_kernel()
        assert kernel is not None, "resolve_backend picks 'cpu' only when the kernel loads"
        return kernel.rope_write_kv(
            qkv, cos, sin, ctx.slot_mapping, kv_cache[0], kv_cache[1], self.num_heads
        )

    def forward(self, q: torch.Tensor, kv_cache: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        meta: CpuPagedMetadata = ctx.attn_metadata
        if meta.decode_block_tables is None:
            return super().forward(q, kv_cache, ctx)
        nd = meta.decode_block_tables.shape[0]
        kernel = load_kernel()
        assert kernel is not None, "resolve_backend picks 'cpu' only when the kernel loads"
        decoded = kernel.paged_decode(
            q[:nd],
            kv_cache[0],
            kv_cache[1],
            meta.decode_block_tables,
            meta.decode_seq_lens,
            self.scale,
            kernels.num_threads(),
        )
        if nd == q.shape[0]:
            return decoded.reshape(nd, -1)
        out = super().forward(q, kv_cache, ctx)  # prefills (decode slots are None here)
        out[:nd] = decoded.reshape(nd, -1)
        return out


def _without_decodes(ctx: ForwardContext) -> ForwardContext:
    nd = ctx.num_decodes
    return ForwardContext(
        ctx.positions,
        ctx.slot_mapping,
        ctx.block_tables[nd:],
        ctx.query_lens[nd:],
        ctx.context_lens[nd:],
        0,
    )
