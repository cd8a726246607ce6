"""Reference backend: one request at a time, explicit math in float32. Slow and obvious."""

from __future__ import annotations

import torch

from chatfleet.model.attention import kv_format
from chatfleet.model.attention.base import AttentionBackend
from chatfleet.model.forward_context import ForwardContext


class ReferenceAttention(AttentionBackend):
    name = "reference"

    def forward(self, q: torch.Tensor, kv_cache: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        _, _, block_size, kv_heads, width = kv_cache.shape
        dim = self.head_dim
        group = self.num_heads // self.num_kv_heads
        out = torch.empty(q.shape[0], self.num_heads * dim, dtype=q.dtype, device=q.device)
        start = 0
        for i, (qlen, ctx_len) in enumerate(zip(ctx.query_lens, ctx.context_lens, strict=True)):
            seq_len = ctx_len + qlen
            blocks = ctx.block_tables[i, : -(-seq_len // block_size)]
            k = kv_format.decode(kv_cache[0, blocks].reshape(-1, kv_heads, width), torch.float32)
            v = kv_format.decode(kv_cache[1, blocks].reshape(-1, kv_heads, width), torch.float32)
            k, v = k[:seq_len], v[:seq_len]
            k = k.repeat_interleave(group, dim=1)  # [S, H, D]
            v = v.repeat_interleave(group, dim=1)
            qi = q[start : start + qlen].float()  # [Q, H, D]
            scores = torch.einsum("qhd,shd->hqs", qi, k) * self.scale
            # Query j sits at absolute position ctx_len + j and may see keys 0..ctx_len + j.
            key_pos = torch.arange(seq_len, device=q.device)
            query_pos = ctx_len + torch.arange(qlen, device=q.device)
            scores.masked_fill_(key_pos[None, None, :] > query_pos[None, :, None], float("-inf"))
            probs = scores.softmax(dim=-1)
            o = torch.einsum("hqs,shd->qhd", probs, v)
            out[start : start + qlen] = o.reshape(qlen, -1).to(q.dtype)
            start += qlen
        return out
