"""The int8 kernel's weights (csrc/qlinear.h): integer codes per 32-value block with a scale and
a zero point (value = scale * code + zero), tiled by 16 output rows and packed in the narrowest
width that holds the codes:

    8 bits  vector j (0..7) of a (tile, block): lane l holds codes 4j .. 4j + 3 of row l
    4 bits  vectors j and j + 4 in the low and high nibbles of vector j (4 vectors)
    5, 6    the 4-bit vectors, then one vector per higher bit (a plane: bit i of 64-bit word
            j is that bit of byte i of vector j)
    6 bits  also a scale and zero per 16-value half block (GGUF Q6_K's sub-blocks): vectors
            0..3 hold a block's first half, 4..7 its second

Scales and zeros are fp16, by tile: [tiles, nb, 16], or [tiles, nb, 2, 16] in halves.
"""

from __future__ import annotations

import torch

from chatfleet.model.weight_rows import Codes, WeightRows, code_values

BLOCK, TILE = 32, 16
_BIT = torch.arange(8, dtype=torch.uint8)


def held_bits(code_bits: int) -> int:
    """The narrowest width the kernel reads that holds codes below 2**code_bits."""
    return next(bits for bits in (4, 5, 6, 8) if code_bits <= bits)


def halves(bits: int) -> int:
    return 2 if bits == 6 else 1


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


def fit(item: Codes | torch.Tensor) -> Codes:
    """8-bit codes per block for fp32 rows, or for codes whose scales cover half blocks."""
    values = item if isinstance(item, torch.Tensor) else code_values(item)
    return quantize_blocks(values.reshape(len(values), -1, BLOCK))


def quantize_rows(weight: WeightRows) -> Codes:
    """Codes uint8 [n, k / 32, 32], scale and zero [n, k / 32] of [n, k] weights, a block of
    rows at a time: quantize_blocks' temporaries are several fp32 copies of what it is given,
    which for a whole output matrix (vocab x hidden) would dwarf the model. Rows that come
    encoded per block (GGUF blocks the format holds as they are) are taken as they are."""
    n, k = weight.shape
    codes = torch.empty(n, k // BLOCK, BLOCK, dtype=torch.uint8)
    scale, zero = torch.empty(n, k // BLOCK), torch.empty(n, k // BLOCK)
    at = 0
    for item in weight.codes_or_blocks():
        c, s, z = item if isinstance(item, tuple) and item[1].dim() == 2 else fit(item)
        end = at + len(c)
        codes[at:end], scale[at:end], zero[at:end] = c, s, z
        at = end
    return codes, scale, zero


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Tiled codes [..., 8, 16, 4] -> the kernel's `bits` vectors [..., bits, 16, 4]."""
    if bits == 8:
        return codes
    nibbles, lead = codes & 0x0F, codes.shape[:-3]
    vectors = [nibbles[..., :4, :, :] | (nibbles[..., 4:, :, :] << 4)]
    for bit in range(4, bits):
        plane = ((codes >> bit) & 1).reshape(*lead, 64, 8)
        vectors.append((plane << _BIT).sum(-1, dtype=torch.uint8).reshape(*lead, 1, 16, 4))
    return torch.cat(vectors, dim=-3)


def unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """The inverse of pack: [..., bits, L, 4] -> codes [..., 8, L, 4] (L = 16; 1 for rows of
    4- or 8-bit tiles picked by lane, whose codes sit by lane)."""
    if bits == 8:
        return packed
    nibbles = packed[..., :4, :, :]
    codes = torch.cat([nibbles & 0x0F, nibbles >> 4], dim=-3)
    for bit in range(4, bits):
        plane = packed[..., bit, :, :].reshape(*packed.shape[:-3], 64, 1)
        codes |= ((plane >> _BIT) & 1).reshape(codes.shape) << bit
    return codes


def lane_codes(packed: torch.Tensor, tile: torch.Tensor, lane: torch.Tensor, bits: int):
    """Codes [T, nb, 8, 4] of rows (tile, lane) of packed weights [tiles, nb, bits, 16, 4],
    without unpacking their whole tiles: a lane's nibbles sit in its lane; its bits of plane
    word j (one per byte of vector j, 4 a lane) are nibble lane % 2 of byte lane // 2."""
    if bits in (4, 8):
        return unpack(packed[tile, :, :, lane, None], bits)[..., 0, :]
    codes = unpack(packed[tile, :, :4, lane, None], 4)[..., 0, :]
    shift, at = (4 * (lane % 2)).to(torch.uint8)[:, None, None], torch.arange(len(tile))
    for bit in range(4, bits):
        words = packed[tile, :, bit].reshape(len(tile), -1, 8, 8)  # [T, nb, word, byte]
        nibble = (words[at, :, :, lane // 2] >> shift) & 0x0F  # [T, nb, 8]
        codes |= ((nibble[..., None] >> _BIT[:4]) & 1) << bit
    return codes


def tile_scales(scale: torch.Tensor, bits: int) -> torch.Tensor:
    """scale or zero [16 t, nb] or [16 t, nb, 2] -> by tile, [t, nb, 16] or [t, nb, 2, 16]."""
    h = halves(bits)
    rows, nb = scale.shape[:2]
    scale = scale.reshape(rows, nb, -1).expand(rows, nb, h)  # a block's scale for both halves
    tiled = scale.reshape(rows // TILE, TILE, nb, h).permute(0, 2, 3, 1)
    return tiled if h == 2 else tiled[:, :, 0]


def untile_scales(tiled: torch.Tensor, bits: int) -> torch.Tensor:
    """The inverse of tile_scales, as fp32 [16 t, nb, 1 or 2]: one per block or half block."""
    t, nb = tiled.shape[:2]
    return tiled.reshape(t, nb, halves(bits), TILE).permute(0, 3, 1, 2).reshape(t * TILE, nb, -1)


def untile_codes(codes: torch.Tensor) -> torch.Tensor:
    """Unpacked tiles [t, nb, 8, 16, 4] -> codes by row, [16 t, nb, 32]."""
    t, nb = codes.shape[:2]
    return codes.permute(0, 3, 1, 2, 4).reshape(t * TILE, nb, BLOCK)
