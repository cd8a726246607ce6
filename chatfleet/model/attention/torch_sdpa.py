"""Fast backend in plain torch ops: all decodes in one grouped product, prefill chunks one
SDPA call each. Indices and masks are built once per step and shared by all layers.
Runs unchanged on CPU and CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from chatfleet.model.attention import kv_format
from chatfleet.model.attention.base import AttentionBackend
from chatfleet.model.forward_context import ForwardContext


@dataclass
class _PrefillItem:
    start: int
    query_len: int
    slots: torch.Tensor  # [S] flat slots of every key this chunk attends to
    mask: torch.Tensor | None  # [Q, S] bool, None = plain causal (no cached context)


@dataclass
class SdpaMetadata:
    decode_slots: torch.Tensor | None  # [Bd, Lmax] flat slot of key j of decode request b
    decode_mask: torch.Tensor | None  # [Bd, 1, 1, Lmax] bool, True = attend
    prefills: list[_PrefillItem]


def _slots_for(block_tables: torch.Tensor, length: int, block_size: int) -> torch.Tensor:
    """Flat slot of key positions 0..length-1 for every row of block_tables: [B, length]."""
    pos = torch.arange(length, device=block_tables.device)
    return block_tables[:, pos // block_size] * block_size + pos % block_size


class SdpaAttention(AttentionBackend):
    name = "sdpa"

    def build_metadata(self, ctx: ForwardContext, block_size: int) -> SdpaMetadata:
        device = ctx.block_tables.device
        seq_lens = ctx.seq_lens
        nd = ctx.num_decodes
        decode_slots = decode_mask = None
        if nd:
            max_len = max(seq_lens[:nd])
            decode_slots = _slots_for(ctx.block_tables[:nd], max_len, block_size)
            lens = torch.tensor(seq_lens[:nd], device=device)
            decode_mask = torch.arange(max_len, device=device)[None, :] < lens[:, None]
            decode_mask = decode_mask[:, None, None, :]
        prefills = []
        start = nd
        for i in range(nd, len(seq_lens)):
            qlen, ctx_len = ctx.query_lens[i], ctx.context_lens[i]
            slots = _slots_for(ctx.block_tables[i : i + 1], seq_lens[i], block_size)[0]
            mask = None
            if ctx_len:
                key_pos = torch.arange(seq_lens[i], device=device)
                query_pos = ctx_len + torch.arange(qlen, device=device)
                mask = key_pos[None, :] <= query_pos[:, None]
            prefills.append(_PrefillItem(start, qlen, slots, mask))
            start += qlen
        return SdpaMetadata(decode_slots, decode_mask, prefills)

    def forward(self, q: torch.Tensor, kv_cache: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        meta: SdpaMetadata = ctx.attn_metadata
        _, num_blocks, block_size, kv_heads, width = kv_cache.shape
        flat = kv_cache.view(2, num_blocks * block_size, kv_heads, width)
        dim = self.head_dim
        out = torch.empty(q.shape[0], self.num_heads * dim, dtype=q.dtype, device=q.device)
        if meta.decode_slots is not None and meta.decode_mask is not None:
            # NOTE: one grouped product per KV head instead of SDPA: with a padding mask and
            # grouped heads SDPA takes its math path, which copies every key once per query
            # head, and decode attention then costs many times the KV read it needs.
            nd = meta.decode_slots.shape[0]
            group = self.num_heads // kv_heads
            k = kv_format.decode(flat[0][meta.decode_slots], q.dtype)  # [Bd, L, KVH, D]
            v = kv_format.decode(flat[1][meta.decode_slots], q.dtype)
            # Scaled first, as SDPA does: an fp16 product of unscaled q and k can overflow.
            qd = q[:nd].reshape(nd, kv_heads, group, dim) * self.scale
            scores = torch.einsum("bhgd,blhd->bhgl", qd, k).float()
            scores = scores.masked_fill(~meta.decode_mask, float("-inf"))
            probs = scores.softmax(-1).to(q.dtype)
            out[:nd] = torch.einsum("bhgl,blhd->bhgd", probs, v).reshape(nd, -1)
        for item in meta.prefills:
            k = kv_format.decode(flat[0][item.slots], q.dtype).transpose(0, 1).unsqueeze(0)
            v = kv_format.decode(flat[1][item.slots], q.dtype).transpose(0, 1).unsqueeze(0)
            qi = q[item.start : item.start + item.query_len].transpose(0, 1).unsqueeze(0)
            o = F.scaled_dot_product_attention(
                qi,
                k,
                v,
                attn_mask=item.mask,
                is_causal=item.mask is None,
                scale=self.scale,
                enable_gqa=True,
            )
            out[item.start : item.start + item.query_len] = (
                o[0].transpose(0, 1).reshape(item.query_len, -1)
            )
        return out
