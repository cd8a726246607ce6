"""Per-step forward metadata, built once by the runner and read by every layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class ForwardContext:
    """Flattened batch of T tokens from B requests; decodes (1 token) come first.

    tokens:    [ r0 | r1 | r2 r2 r2 r2 | r3 r3 ]      query_lens  = [1, 1, 4, 2]
    context:   r2 already had 5 tokens cached       context_lens = [9, 3, 5, 0]
    seq_lens = context_lens + query_lens            (keys each request attends to)
    """

    positions: torch.Tensor  # [T] long
    slot_mapping: torch.Tensor  # [T] long, flat slot index into the KV cache
    block_tables: torch.Tensor  # [B, max_blocks] long, padded with 0
    query_lens: list[int]
    context_lens: list[int]
    num_decodes: int  # the first num_decodes requests have query_len == 1
    attn_metadata: Any = None  # built by the attention backend once per step
    # Per request: positions from here on are output tokens (None: unknown, all prompt).
    prompt_lens: list[int] | None = None

    @property
    def seq_lens(self) -> list[int]:
        return [c + q for c, q in zip(self.context_lens, self.query_lens, strict=True)]
