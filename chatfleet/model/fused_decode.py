"""Decode-only steps through one C++ call for all decoder layers (csrc/decode_step.cpp).

At batch 1 a step is ~180 small kernel calls; the Python between them and their OpenMP
fork/joins leave the memory bus idle for about a third of the step. The fused call runs the
same kernels (int8 linears, RoPE + KV write, paged attention) inside one parallel region, bit
for bit what the unfused path computes, so it is used whenever it applies: int8 weights, the
cpu attention backend, and a step in which every request decodes one token.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from chatfleet.model import kernels
from chatfleet.model.forward_context import ForwardContext
from chatfleet.model.linear import BlockInt8Linear


def load_kernel() -> Any | None:
    return kernels.load("decode_step")


class FusedDecode:
    """The per-layer tensors of an int8 Llama, gathered once, and the call that runs them."""

    # Steps with this many rows or more go layer by layer: a matmul plan gives them another
    # kernel (see matmul_plan.py), which the fused call does not have. None: every step.
    max_rows: int | None = None
    # Where set by `choose_max_rows`: per row count timed, (fused ms, layer-by-layer ms).
    timings: dict[int, tuple[float, float]] | None = None

    def __init__(self, layers: Any, num_heads: int, eps: float, kernel: Any) -> None:
        weights: list[torch.Tensor] = []
        norms: list[torch.Tensor] = []
        self.linears: list[BlockInt8Linear] = []
        for layer in layers:
            for linear in (layer.qkv, layer.o, layer.gate_up, layer.down):
                weights += [linear.packed, linear.scales, linear.zeros]
                self.linears.append(linear)
            norms += [layer.attn_norm.data, layer.ffn_norm.data]
        # The weights are checked and gathered once here; a step passes only what changes.
        self.layers = kernel.DecodeLayers(weights, norms, num_heads, eps)

    def follow_tiles(self) -> None:
        """Run each matmul on AMX tiles (or their software copy) for the row buckets its
        linear does (BlockInt8Linear.tile_mask, set by a matmul plan)."""
        emulate = any(linear.emulate_tiles for linear in self.linears)
        self.layers.set_tiles([linear.tile_mask for linear in self.linears], emulate)

    @classmethod
    def build(cls, model: Any, attention: str) -> FusedDecode | None:
        """None unless every decoder linear is int8, attention is the cpu backend, the model
        has no q/k/v biases and the kernel builds here."""
        linears = [m for layer in model.layers for m in (layer.qkv, layer.o, layer.gate_up)]
        linears += [layer.down for layer in model.layers]
        if attention != "cpu" or not all(isinstance(m, BlockInt8Linear) for m in linears):
            return None
        if model.config.qkv_bias:  # the kernel has no bias add
            return None
        kernel = load_kernel()
        if kernel is None:
            return None
        config = model.config
        return cls(model.layers, config.num_heads, config.rms_norm_eps, kernel)

    def applies(self, ctx: ForwardContext) -> bool:
        rows = len(ctx.query_lens)
        return ctx.num_decodes == rows and (self.max_rows is None or rows < self.max_rows)

    def __call__(
        self,
        h: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        ctx: ForwardContext,
        kv_caches: list[torch.Tensor],
        scale: float,
    ) -> torch.Tensor:
        seq_lens = torch.tensor([c + 1 for c in ctx.context_lens], dtype=torch.long)
        return self.layers.run(
            h,
            kv_caches,
            cos,
            sin,
            ctx.slot_mapping,
            ctx.block_tables,
            seq_lens,
            scale,
            kernels.num_threads(),
        )


def _synthetic_decode(rows: int, block_size: int, attn: Any) -> ForwardContext:
    """`rows` requests decoding their first token, each in its own block: attention reads one
    key, so a step is the matmuls and the work between them."""
    ids = torch.arange(rows)
    ctx = ForwardContext(
        positions=torch.zeros(rows, dtype=torch.long),
        slot_mapping=ids * block_size,
        block_tables=ids[:, None],
        query_lens=[1] * rows,
        context_lens=[0] * rows,
        num_decodes=rows,
    )
    ctx.attn_metadata = attn.build_metadata(ctx, block_size)
    return ctx


def choose_max_rows(
    model: Any,
    kv_caches: list[torch.Tensor],
    attn: Any,
    block_size: int,
    candidates: list[int],
    reps: int = 3,
) -> None:
    """Sets `model.fused_decode.max_rows` by measurement: a decode step of each candidate row
    count (ascending) is timed through the fused call and layer by layer (where a matmul plan
    gives bf16 matmuls), the median of `reps`; the fused call keeps every row count below the
    first one it loses. The fused call's int8 matmuls in one parallel region can beat faster
    matmuls called one by one, and by how much depends on the CPU: the plan's per-matmul
    timings do not see it."""
    fused: FusedDecode = model.fused_decode
    fused.timings = {}
    fused.max_rows = None
    for rows in candidates:
        ctx = _synthetic_decode(rows, block_size, attn)
        ids = torch.zeros(rows, dtype=torch.long)
        medians = []
        for limit in (None, 0):  # fused, then layer by layer
            fused.max_rows = limit
            model(ids, ctx, kv_caches, attn)  # warm-up
            times = []
            for _ in range(reps):
                start = time.perf_counter()
                model(ids, ctx, kv_caches, attn)
                times.append((time.perf_counter() - start) * 1e3)
            medians.append(sorted(times)[reps // 2])
        fused.timings[rows] = (medians[0], medians[1])
        fused.max_rows = None
        if medians[1] < medians[0]:
            fused.max_rows = rows
            break
    for cache in kv_caches:  # the synthetic keys and values out again
        cache.zero_()
