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

from chatfleet.model import kernels
from chatfleet.model.matmul_plan import bucket_index
from chatfleet.model.weight_rows import Codes, WeightRows

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


def quantize_blocks(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """blocks [n, nb, 32] -> (codes 0..255, scale [n, nb], zero [n, nb]), w ~= scale * code + zero.

    Per block, the better of two grids: min..max in 255 steps (exact for Q4_1's 16 levels,
    since 255 = 15 * 17) or symmetric amax / 127 around code 128 (exact for Q8_0).
    """
    lo, hi = blocks.amin(-1), blocks.amax(-1)
    candidates = []
    for scale, zero in (((hi - lo) / 255.0, lo), (torch.maximum(-lo, hi) / 127.0, None)):
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero = -128.0 * scale if zero is None else zero
        codes = torch.round((blocks - zero[..., None]) / scale[..., None]).clamp_(0, 255)
        error = (codes * scale[..., None] + zero[..., None] - blocks).abs().amax(-1)
        candidates.append((codes, scale, zero, error))
    (ca, sa, za, ea), (cs, ss, zs, es) = candidates
    pick = es < ea  # [n, nb]
    return (
        torch.where(pick[..., None], cs, ca),
        torch.where(pick, ss, sa),
        torch.where(pick, zs, za),
    )


def _quantize_rows(weight: WeightRows, block: int) -> tuple[torch.Tensor, ...]:
    """Codes uint8 [n, k / block, block], scale and zero [n, k / block] of [n, k] weights, a
    block of rows at a time: quantize_blocks' temporaries are several fp32 copies of what it
    is given, which for a whole output matrix (vocab x hidden) would dwarf the model. Rows that
    come encoded (GGUF blocks the format holds as they are) are taken as they are."""
    n, k = weight.shape
    codes = torch.empty(n, k // block, block, dtype=torch.uint8)
    scale, zero = torch.empty(n, k // block), torch.empty(n, k // block)
    at = 0
    for item in weight.codes_or_blocks():
        if isinstance(item, torch.Tensor):
            item = quantize_blocks(item.reshape(-1, k // block, block))
        c, s, z = item
        end = at + len(c)
        codes[at:end], scale[at:end], zero[at:end] = c, s, z
        at = end
    return codes, scale, zero


class BlockInt8Linear(Linear):
    """8-bit weights in 32-wide blocks (w = s * u + z) times activations quantized per 32-wide
    block, accumulated in int32 by the VNNI kernel in csrc/qlinear.cpp.

    Activations are rounded to 16 bits per 32 values; GGUF Q8_0 / Q4_0 / Q4_1 blocks are held
    exactly, as their own codes (modelfile/gguf_blocks.py; Q4_1 and Q8_0 also survive
    `quantize_blocks`), so the result matches the fp32 matmul on the same weights to float
    rounding, bit-identically whatever the batch.
    """

    fmt = "int8"
    packed: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    plan: tuple[str, ...] | None = None  # kernel per row bucket, set by use_plan
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
        vectors = 8 if self.bits == 8 else 4  # 4-bit: two codes a byte
        self.register_buffer("packed", torch.empty(n // 16, nb, vectors, 16, 4, dtype=torch.uint8))
        # fp16 scales, by tile: exact for Q8_0 / Q4_0 / Q4_1 blocks (their d and m are fp16
        # already); a K-quant's d * sub-block scale is rounded to them once.
        self.register_buffer("scales", torch.empty(n // 16, nb, 16, dtype=torch.float16))
        self.register_buffer("zeros", torch.empty(n // 16, nb, 16, dtype=torch.float16))
        tile = 0
        for codes, scale, zero in blocks:
            tiles = len(codes) // 16
            self._tile(codes, step, tile)
            self.scales[tile : tile + tiles] = scale.reshape(tiles, 16, nb).permute(0, 2, 1)
            self.zeros[tile : tile + tiles] = zero.reshape(tiles, 16, nb).permute(0, 2, 1)
            tile += tiles

    def _codes(self, rows: WeightRows) -> tuple[Iterable[Codes], int]:
        """Sets the bit width; returns the codes, scales and zeros in blocks of whole tiles, and
        the step the codes sit on."""
        if rows.code_bits is not None and all(count % self.TILE == 0 for count, *_ in rows.parts):
            # Codes read from the file, or fitted to 8 bits from blocks it gives as fp32, are
            # tiled a block of rows at a time: no copy of the whole matrix's codes beside its
            # tiles. 4-bit formats are held in 4 bits.
            self.bits = 4 if rows.code_bits <= 4 else 8
            aligned = dataclasses.replace(rows, align=math.lcm(rows.align, self.TILE))
            # Small blocks: fitting one takes several fp32 copies of it.
            blocks = aligned.codes_or_blocks(rows=256)
            fit = lambda b: quantize_blocks(b.reshape(len(b), -1, self.BLOCK))  # noqa: E731
            return ((fit(b) if isinstance(b, torch.Tensor) else b) for b in blocks), 1
        codes, scale, zero = _quantize_rows(rows, self.BLOCK)
        # Weights from 4-bit blocks are held in 4 bits, halving what a batch-1 step reads: read
        # as codes they are 0..15; requantized, they sit on every 17th code (a 17x scale).
        parts = codes.split(4096)
        self.bits, step = 8, 1
        if all(bool((c <= 15).all()) for c in parts):
            self.bits = 4
        elif all(bool((c % 17 == 0).all()) for c in parts):
            self.bits, step, scale = 4, 17, scale * 17
        return [(codes, scale, zero)], step

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
            if self.bits == 4:
                tiled = tiled[:, :, :4] | (tiled[:, :, 4:] << 4)
            self.packed[first + t : first + t + len(tiled)] = tiled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused(x)

    def use_plan(self, choices: tuple[str, ...]) -> None:
        """Multiply by a bf16 copy of the weights (oneDNN) for the row buckets `choices` gives
        to "bf16" (see matmul_plan.py); the copy costs 2 bytes per weight."""
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
    ) -> torch.Tensor:
        """The VNNI kernel, whatever the plan."""
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
        )

    def dequantized_weight(self) -> torch.Tensor:
        n, k = self.out_features, self.in_features
        codes = self.packed
        if self.bits == 4:
            codes = torch.cat([codes & 0x0F, codes >> 4], dim=2)
        codes = codes.permute(0, 3, 1, 2, 4).reshape(n, k // self.BLOCK, self.BLOCK)
        untile = lambda t: t.permute(0, 2, 1).reshape(n, -1, 1)  # noqa: E731
        scales, zeros = untile(self.scales.float()), untile(self.zeros.float())
        return (codes.float() * scales + zeros).reshape(n, k)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Only the rows asked for are decoded (the same arithmetic as dequantized_weight)."""
        tile, lane = ids // self.TILE, ids % self.TILE
        codes = self.packed[tile, :, :, lane]  # [T, nb, 8 (4 when 4-bit), 4]
        if self.bits == 4:
            codes = torch.cat([codes & 0x0F, codes >> 4], dim=2)
        codes = codes.reshape(len(ids), -1, self.BLOCK)
        scales = self.scales[tile, :, lane].float()[..., None]  # [T, nb, 1]
        zeros = self.zeros[tile, :, lane].float()[..., None]
        return (codes.float() * scales + zeros).reshape(len(ids), self.in_features)


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
