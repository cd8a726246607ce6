"""CPU backend: decodes through a small C++ kernel that reads K/V straight from the paged
cache (no gather, no padding to the longest request); prefill chunks use SDPA like `sdpa`.

The extension is compiled on first use (about a minute on 2 cores) and cached by torch under
~/.cache/torch_extensions; if no compiler is available, `load_kernel()` returns None and the
engine uses the `sdpa` backend instead.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch

from chatfleet.model.attention.torch_sdpa import SdpaAttention, SdpaMetadata
from chatfleet.model.forward_context import ForwardContext

logger = logging.getLogger(__name__)
_SOURCE = os.path.join(os.path.dirname(__file__), "..", "..", "csrc", "paged_attention.cpp")


@functools.cache
def load_kernel() -> Any | None:
    try:
        from torch.utils.cpp_extension import load

        return load(
            name="chatfleet_paged_attention",
            sources=[os.path.abspath(_SOURCE)],
            # Vectorized for the build machine; AMX tiles are never emitted by the compiler.
            extra_cflags=["-O3", "-march=native", "-ffast-math", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as e:  # no compiler / headers: fall back to the pure-torch backend
        logger.warning("paged attention kernel unavailable (%s); using sdpa", e)
        return None


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
