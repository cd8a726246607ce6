"""Weight formats for the matmuls.

On CPUs without AMX / AVX512-BF16, bf16 and torch's int4 weight-only kernels are slower than
fp32, and torch's W8A8 (`_int_mm`, per-token activation scales) is fast but coarse: one
outlier channel sets the scale of the whole token and moves logprobs visibly. chatfleet's
`int8` format runs its own VNNI kernel instead: 8-bit weights and 16-bit activations, both
scaled per 32 values, which matches fp32 on the same weights to float rounding while reading
a quarter of the bytes. `auto` picks it on CPUs with AVX-512 VNNI, else fp32; bf16 on CUDA.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F

from chatfleet.model import block_codes as bc
from chatfleet.model import kernels
from chatfleet.model.matmul_plan import bucket_index
from chatfleet.model.weight_rows import Codes, WeightRows, code_values

Weight = torch.Tensor | WeightRows  # a whole matrix, or one read in blocks of rows


class Linear(torch.nn.Module):
    """y = x @ W^T for x [T, in] in the compute dtype."""

    fmt = "base"

    def __init__(self, weight: Weight) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape

    def dequantized_weight(self) -> torch.Tensor:
        """The weight the format actually multiplies by, as fp32 [out, in] (for references)."""
        raise NotImplementedError

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows `ids` of the weight as the format holds them, [len(ids), in] fp32: a tied
        embedding is looked up in its head's weights, so the model holds it once."""
        raise NotImplementedError

    def fused(
        self,
        x: torch.Tensor,
        norm: torch.Tensor | None = None,
        eps: float = 0.0,
        swiglu: bool = False,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """residual + self(prologue(x)), where the prologue is RMSNorm with weight `norm`, or
        SwiGLU (x = [gate | up] -> silu(gate) * up). Formats with a kernel fuse all of it."""
        y = self(_prologue(x, norm, eps, swiglu))
        return y if residual is None else residual + y


def _prologue(x: torch.Tensor, norm: torch.Tensor | None, eps: float, swiglu: bool) -> torch.Tensor:
    if norm is not None:
        x = F.rms_norm(x, (x.shape[-1],), norm, eps)
    if swiglu:
        gate, up = x.chunk(2, dim=-1)
        x = F.silu(gate) * up
    return x


class DenseLinear(Linear):
    """fp32 or bf16 weights through the platform GEMM (oneDNN / MKL / cuBLAS)."""

    def __init__(self, weight: Weight, dtype: torch.dtype) -> None:
        super().__init__(weight)
        self.fmt = {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]
        held = weight.whole(dtype) if isinstance(weight, WeightRows) else weight.to(dtype)
        self.weight = torch.nn.Parameter(held.contiguous(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(self.weight.dtype), self.weight).to(x.dtype)

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight.float()

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight).float()


class BlockInt8Linear(Linear):
    """8-bit weights in 32-wide blocks (w = s * u + z) times activations quantized per 32-wide
    block, accumulated in int32 by the VNNI kernel in csrc/qlinear.cpp.

    Activations are rounded to 16 bits per 32 values; GGUF Q8_0 / Q4_0 / Q4_1 blocks are held
    exactly, as their own codes (modelfile/gguf_blocks.py; Q4_1 and Q8_0 also survive
    `quantize_blocks`), so the result matches the fp32 matmul on the same weights to float
    rounding, bit-identically whatever the batch. Codes are held in 8, 6, 5 or 4 bits (`bits`;
    layouts in block_codes.py).
    """

    fmt = "int8"
    packed: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    plan: tuple[str, ...] | None = None  # kernel per row bucket, set by use_plan
    # Bit i: the int8 kernel runs bucket i's row counts on AMX tiles (the same bits; set by
    # use_plan). emulate_tiles: on the tiles' software copy, which checks that path anywhere.
    tile_mask: int = 0
    emulate_tiles: bool = False
    TILE, BLOCK = 16, 32

    def __init__(self, weight: Weight) -> None:
        super().__init__(weight)
        n, k = weight.shape
        if n % self.TILE or k % self.BLOCK:
            raise ValueError(f"int8 weights need out % 16 == 0 and in % 32 == 0, got {n}x{k}")
        kernel = kernels.load("qlinear")
        if kernel is None:
            raise ValueError("weight format int8 needs an AVX-512 VNNI CPU and a C++ compiler")
        self.kernel: Any = kernel
        rows = weight if isinstance(weight, WeightRows) else WeightRows.of(weight)
        blocks, step = self._codes(rows)
        nb = k // self.BLOCK
        # As many vectors per (tile, block) as bits per code (block_codes.py).
        shape = (n // 16, nb, self.bits, 16, 4)
        self.register_buffer("packed", torch.empty(shape, dtype=torch.uint8))
        # fp16 scales, by tile: exact for Q8_0 / Q4_0 / Q4_1 blocks (their d and m are fp16
        # already); a K-quant's d * sub-block scale is rounded to them once.
        halves = (2,) if bc.halves(self.bits) == 2 else ()
        self.register_buffer("scales", torch.empty(n // 16, nb, *halves, 16, dtype=torch.float16))
        self.register_buffer("zeros", torch.empty_like(self.scales))
        tile = 0
        for codes, scale, zero in blocks:
            tiles = len(codes) // 16
            self._tile(codes, step, tile)
            self.scales[tile : tile + tiles] = bc.tile_scales(scale, self.bits)
            self.zeros[tile : tile + tiles] = bc.tile_scales(zero, self.bits)
            tile += tiles

    def _codes(self, rows: WeightRows) -> tuple[Iterable[Codes], int]:
        """Sets the bit width; returns the codes, scales and zeros in blocks of whole tiles, and
        the step the codes sit on."""
        if rows.code_bits is not None and all(count % self.TILE == 0 for count, *_ in rows.parts):
            # Codes read from the file, or fitted to 8 bits from blocks it gives as fp32, are
            # tiled a block of rows at a time: no copy of the whole matrix's codes beside its
            # tiles. 4-, 5- and 6-bit formats are held in 4, 5 and 6 bits.
            self.bits = bc.held_bits(rows.code_bits)
            aligned = dataclasses.replace(rows, align=math.lcm(rows.align, self.TILE))
            # Small blocks: fitting one takes several fp32 copies of it.
            blocks = aligned.codes_or_blocks(rows=256)
            return (self._fitted(b) for b in blocks), 1
        codes, scale, zero = bc.quantize_rows(rows)
        # Weights from 4-bit blocks are held in 4 bits, halving what a batch-1 step reads: read
        # as codes they are 0..15; requantized, they sit on every 17th code (a 17x scale).
        parts = codes.split(4096)
        self.bits, step = 8, 1
        if all(bool((c <= 15).all()) for c in parts):
            self.bits = 4
        elif all(bool((c % 17 == 0).all()) for c in parts):
            self.bits, step, scale = 4, 17, scale * 17
        return [(codes, scale, zero)], step

    def _fitted(self, item: Codes | torch.Tensor) -> Codes:
        """fp32 rows fitted to 8 bits; codes scaled per half block in a matrix held in 8
        bits (one stacked with a format only fitting gives) fitted again from their values."""
        if isinstance(item, tuple) and (self.bits == 6 or item[1].dim() == 2):
            return item
        return bc.fit(item)

    def _tile(self, codes: torch.Tensor, step: int, first: int) -> None:
        """codes [16 t, nb, 32] (divided by `step`) -> packed[first : first + t], each tile
        [nb, 8, 16, 4]: vector j holds, per output row (lane), the 4 codes of columns 4j..4j+3
        of the block (see qlinear.cpp); in 4 bits, vector j in the low nibbles and j + 4 in the
        high ones. 256 tiles at a time: the temporaries stay small beside a vocabulary-sized
        matrix."""
        nb = codes.shape[1]
        for t in range(0, len(codes) // 16, 256):
            rows = codes[t * 16 : (t + 256) * 16]
            rows = rows // step if step != 1 else rows
            tiled = rows.reshape(-1, 16, nb, 8, 4).permute(0, 2, 3, 1, 4)
            self.packed[first + t : first + t + len(tiled)] = bc.pack(tiled, self.bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused(x)

    def use_plan(self, choices: tuple[str, ...]) -> None:
        """Multiply by a bf16 copy of the weights (oneDNN) for the row buckets `choices` gives
        to "bf16" (see matmul_plan.py); the copy costs 2 bytes per weight. Buckets given to
        "amx-int8" run the int8 kernel on AMX tiles: the same bits, no copy."""
        self.tile_mask = sum(1 << i for i, kernel in enumerate(choices) if kernel == "amx-int8")
        self.plan = choices if "bf16" in choices else None
        if self.plan is not None:
            self.bf16_weight = self.dequantized_weight().to(torch.bfloat16)  # [out, in]

    def fused(
        self,
        x: torch.Tensor,
        norm: torch.Tensor | None = None,
        eps: float = 0.0,
        swiglu: bool = False,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.plan is not None and self.plan[bucket_index(x.shape[0])] == "bf16":
            x = _prologue(x, norm, eps, swiglu)
            y = F.linear(x.to(torch.bfloat16), self.bf16_weight)
            # fp32 + bf16 promotes to fp32 in the add itself: no separate widening pass.
            return y.float() if residual is None else residual + y
        return self.int8(x, norm, eps, swiglu, residual)

    def int8(
        self,
        x: torch.Tensor,
        norm: torch.Tensor | None = None,
        eps: float = 0.0,
        swiglu: bool = False,
        residual: torch.Tensor | None = None,
        tile_mask: int | None = None,
    ) -> torch.Tensor:
        """The int8 kernel, whatever the plan's bf16 buckets; on AMX tiles for the row buckets
        of `tile_mask` (default: the plan's)."""
        return self.kernel.qlinear(
            x,
            self.packed,
            self.scales,
            self.zeros,
            kernels.num_threads(),
            norm,
            eps,
            swiglu,
            residual,
            self.tile_mask if tile_mask is None else tile_mask,
            self.emulate_tiles,
        )

    def dequantized_weight(self) -> torch.Tensor:
        codes = bc.untile_codes(bc.unpack(self.packed, self.bits))
        scales, zeros = (bc.untile_scales(s.float(), self.bits) for s in (self.scales, self.zeros))
        return code_values((codes, scales, zeros))

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Only the rows asked for are decoded (the same arithmetic as dequantized_weight)."""
        if self.bits in (4, 8):
            return self.kernel.rows(self.packed, self.scales, self.zeros, ids)
        tile, lane, at = ids // self.TILE, ids % self.TILE, torch.arange(len(ids))
        codes = bc.lane_codes(self.packed, tile, lane, self.bits)
        nb, h = self.packed.shape[1], bc.halves(self.bits)
        pick = lambda s: s[tile].reshape(len(ids), nb, h, 16)[at, :, :, lane].float()  # noqa: E731
        return code_values((codes.reshape(len(ids), nb, -1), pick(self.scales), pick(self.zeros)))


def make_linear(weight: Weight, fmt: str) -> Linear:
    if fmt == "int8":
        return BlockInt8Linear(weight)
    return DenseLinear(weight, torch.bfloat16 if fmt == "bf16" else torch.float32)


def resolve_weight_format(fmt: str, device: torch.device) -> str:
    """'auto' -> int8 on VNNI CPUs where the kernel builds, else fp32; bf16 on CUDA."""
    if fmt != "auto":
        return fmt
    if device.type == "cuda":
        return "bf16"
    return "int8" if kernels.load("qlinear") is not None else "fp32"
