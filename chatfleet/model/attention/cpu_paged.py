"""CPU backend: decodes and short prefill chunks go through a small C++ kernel that reads K/V
straight from the paged cache (no gather, no padding to the longest request); long prefill
chunks use SDPA like `sdpa`.

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


# Prefill chunks up to this many tokens go through the paged kernel as one row per token (its
# own causal length): it reads K/V straight from the block table, where SDPA first gathers
# every cached key, and it was the faster of the two at every chunk and context size up to
# the default token budget. Longer chunks keep SDPA, which was never compared there.
MAX_PAGED_QUERY_LEN = 512


@dataclass
class CpuPagedMetadata(SdpaMetadata):
    """Rows for the paged kernel: every decode token and every token of a short prefill chunk,
    each with its own causal length, grouped by request. `paged_rows` holds their token
    indices, or is None when they are exactly the first `num_paged_rows` tokens."""

    num_paged_rows: int = 0
    paged_rows: torch.Tensor | None = None  # [R]
    paged_block_tables: torch.Tensor | None = None  # [N, max_blocks], one per paged request
    paged_row_starts: torch.Tensor | None = None  # [N + 1]: request i owns rows [s[i], s[i+1])
    paged_seq_lens: torch.Tensor | None = None  # [R]


class CpuPagedAttention(SdpaAttention):
    name = "cpu"

    @staticmethod
    def supports(head_dim: int, group: int) -> bool:
        """The head shapes the kernel is instantiated for (`pick` in csrc/attention.h)."""
        return head_dim in (64, 128) and 1 <= group <= 8

    def build_metadata(self, ctx: ForwardContext, block_size: int) -> CpuPagedMetadata:
        requests: list[int] = []  # requests with paged rows
        row_starts = [0]
        seq_lens: list[int] = []
        rows: list[int] = []
        long_prefills: list[int] = []
        token_starts: list[int] = []
        start = 0
        prompt_lens = ctx.prompt_lens or [ctx_len + 1 for ctx_len in ctx.context_lens]
        for i, (qlen, ctx_len) in enumerate(zip(ctx.query_lens, ctx.context_lens, strict=True)):
            token_starts.append(start)
            if qlen > 1 and ctx_len >= prompt_lens[i]:
                # Output tokens computed again (after a preemption, or continuing a reply
                # begun elsewhere): each a lone row, as when it was decoded, for the same bits.
                requests += [i] * qlen
                row_starts += range(row_starts[-1] + 1, row_starts[-1] + qlen + 1)
                seq_lens += range(ctx_len + 1, ctx_len + qlen + 1)
                rows += range(start, start + qlen)
            elif qlen <= MAX_PAGED_QUERY_LEN:
                requests.append(i)
                row_starts.append(row_starts[-1] + qlen)
                seq_lens += range(ctx_len + 1, ctx_len + qlen + 1)
                rows += range(start, start + qlen)
            else:
                long_prefills.append(i)
            start += qlen
        sdpa = SdpaAttention.build_metadata(self, _subset(ctx, long_prefills), block_size)
        for item, i in zip(sdpa.prefills, long_prefills, strict=True):
            item.start = token_starts[i]
        meta = CpuPagedMetadata(None, None, sdpa.prefills, num_paged_rows=len(rows))
        if rows:
            device = ctx.block_tables.device
            is_prefix = rows[-1] == len(rows) - 1
            meta.paged_rows = None if is_prefix else torch.tensor(rows, device=device)
            meta.paged_block_tables = ctx.block_tables[torch.tensor(requests, device=device)]
            meta.paged_row_starts = torch.tensor(row_starts, dtype=torch.long)
            meta.paged_seq_lens = torch.tensor(seq_lens, dtype=torch.long)
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
        n = meta.num_paged_rows
        if n == 0:
            return super().forward(q, kv_cache, ctx)
        kernel = load_kernel()
        assert kernel is not None, "resolve_backend picks 'cpu' only when the kernel loads"
        rows = meta.paged_rows
        attended = kernel.paged_attention(
            q[:n] if rows is None else q[rows],
            kv_cache[0],
            kv_cache[1],
            meta.paged_block_tables,
            meta.paged_row_starts,
            meta.paged_seq_lens,
            self.scale,
            kernels.num_threads(),
        ).reshape(n, -1)
        if n == q.shape[0]:
            return attended
        out = super().forward(q, kv_cache, ctx)  # long prefills; paged rows are left unset
        if rows is None:
            out[:n] = attended
        else:
            out[rows] = attended
        return out


def _subset(ctx: ForwardContext, requests: list[int]) -> ForwardContext:
    """The context restricted to some (prefill) requests, for SDPA's metadata."""
    index = torch.tensor(requests, dtype=torch.long, device=ctx.block_tables.device)
    return ForwardContext(
        ctx.positions,
        ctx.slot_mapping,
        ctx.block_tables[index],
        [ctx.query_lens[i] for i in requests],
        [ctx.context_lens[i] for i in requests],
        0,
    )
