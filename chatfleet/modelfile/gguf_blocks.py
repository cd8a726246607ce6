"""GGUF block formats read as the int8 kernel's own terms: per 32 values, integer codes and a
scale and zero point (value = scale * code + zero; for Q6_K one per 16-value half), without
going through fp32 and back.

    Q8_0  [d][32 x int8]                         code = q + 128  scale d        zero -128 d
    Q4_0  [d][16 bytes: 2 x 4-bit]               code = q        scale d        zero -8 d
    Q4_1  [d][m][16 bytes: 2 x 4-bit]            code = q        scale d        zero m
    Q4_K  256 values: [d][dmin][12 bytes: 8 x 6-bit (sc, m)][128 bytes: 4-bit q]
          sub-block j of 32:                     code = q        scale d sc_j   zero -dmin m_j
    Q5_K  as Q4_K, plus [32 bytes]: a fifth bit per value
    Q6_K  256 values: [128 bytes: low 4 bits][64 bytes: high 2 bits][16 x int8 sc][d]
          sub-block j of 16:                     code = q        scale d sc_j   zero -32 d sc_j

Read this way, 4-, 5- and 6-bit files keep their codes' width (requantizing them would use 8),
and the K-quants' two-level scales are rounded once, to the fp16 the kernel holds, instead of
being fitted again. (ggml-common.h and ggml-quants.c, dequantize_row_*, define the layouts.)
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as Q

# codes uint8 [r, nb, 32], scale and zero [r, nb] (Q6_K: [r, nb, 2], per 16-value half)
Encoded = tuple[np.ndarray, np.ndarray, np.ndarray]

_BYTES = {Q.Q8_0: 34, Q.Q4_0: 18, Q.Q4_1: 20, Q.Q4_K: 144, Q.Q5_K: 176, Q.Q6_K: 210}
_CODE_BITS = {Q.Q8_0: 8, Q.Q4_0: 4, Q.Q4_1: 4, Q.Q4_K: 4, Q.Q5_K: 5, Q.Q6_K: 6}
# Where scale * code + zero in fp32 is gguf's own decoding bit for bit (Q6_K's is
# d sc (q - 32): one rounding, where the codes' form may take two).
_EXACT_IN_FP32 = {Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q4_K, Q.Q5_K}


def encodable(qtype: Q) -> bool:
    return qtype in _BYTES


def exact_in_fp32(qtype: Q) -> bool:
    return qtype in _EXACT_IN_FP32


def code_bits(qtype: Q) -> int:
    """The codes `encode_rows` gives for `qtype` are below 2**code_bits."""
    return _CODE_BITS[qtype]


def encode_rows(data: np.ndarray, qtype: Q) -> Encoded:
    """data: [rows, bytes per row] of `qtype` blocks -> (codes, scale, zero) per 32 values."""
    rows = data.shape[0]
    blocks = np.ascontiguousarray(data).reshape(rows, -1, _BYTES[qtype])
    f16 = lambda a, b: blocks[..., a:b].copy().view(np.float16)[..., 0].astype(np.float32)  # noqa: E731
    if qtype == Q.Q8_0:
        d = f16(0, 2)
        codes = (blocks[..., 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
        return codes, d, -128.0 * d
    if qtype in (Q.Q4_0, Q.Q4_1):
        nibbles = blocks[..., (4 if qtype == Q.Q4_1 else 2) :]
        codes = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=-1)
        d = f16(0, 2)
        return codes, d, (f16(2, 4) if qtype == Q.Q4_1 else -8.0 * d)
    if qtype == Q.Q6_K:
        return _encode_q6_k(blocks)
    return _encode_k(blocks, qtype)


def _encode_q6_k(blocks: np.ndarray) -> Encoded:
    """Q6_K super-blocks [rows, n, 210] -> 8 blocks of 32, two 16-value sub-blocks each. Per
    128-value half: 32-value chunk c takes ql[32 (c % 2) ..] (low nibbles for c < 2, high ones
    after) and bits 2c, 2c + 1 of qh[0 .. 32]."""
    rows, n = blocks.shape[:2]
    shifts = np.arange(0, 8, 2, dtype=np.uint8)[:, None]  # nibbles: 0, 4; high bits: 0, 2, 4, 6
    low = (blocks[..., :128].reshape(rows, n, 2, 1, 64) >> shifts[::2]) & 0x0F
    high = (blocks[..., 128:192].reshape(rows, n, 2, 1, 32) >> shifts) & 3
    codes = (low.reshape(rows, n, 2, 4, 32) | (high << 4)).reshape(rows, n * 8, 32)
    sc = blocks[..., 192:208].copy().view(np.int8).astype(np.float32)  # [rows, n, 16]
    d = blocks[..., 208:210].copy().view(np.float16)[..., 0].astype(np.float32)
    scale = (d[..., None] * sc).reshape(rows, n * 8, 2)
    return codes.astype(np.uint8), scale, -32.0 * scale


def _encode_k(blocks: np.ndarray, qtype: Q) -> Encoded:
    """Q4_K / Q5_K super-blocks [rows, n, bytes] -> 8 sub-blocks of 32 each."""
    rows, n = blocks.shape[:2]
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    dmin = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    sc, m = _scales_and_mins(blocks[..., 4:16])  # [rows, n, 8] each
    qs = blocks[..., -128:].reshape(rows, n, 4, 32)  # 4 chunks of 64 values
    codes = np.stack([qs & 0x0F, qs >> 4], axis=3)  # [rows, n, 4, 2, 32]: sub-block 2c + h
    if qtype == Q.Q5_K:
        qh = blocks[..., 16:48]  # [rows, n, 32]: bit 2c + h of byte l is value l's fifth bit
        bit = np.arange(8, dtype=np.uint8).reshape(4, 2, 1)
        codes = codes | (((qh[:, :, None, None, :] >> bit) & 1) << 4)
    codes = codes.reshape(rows, n * 8, 32)
    scale = (d[..., None] * sc).reshape(rows, n * 8)
    zero = -(dmin[..., None] * m).reshape(rows, n * 8)
    return codes.astype(np.uint8), scale, zero


def _scales_and_mins(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 12 bytes of 6-bit (scale, min) pairs of 8 sub-blocks (get_scale_min_k4)."""
    s = packed.astype(np.uint8)
    lo_sc, lo_m = s[..., 0:4] & 63, s[..., 4:8] & 63  # sub-blocks 0..3
    hi_sc = (s[..., 8:12] & 0x0F) | ((s[..., 0:4] >> 6) << 4)  # sub-blocks 4..7
    hi_m = (s[..., 8:12] >> 4) | ((s[..., 4:8] >> 6) << 4)
    sc = np.concatenate([lo_sc, hi_sc], axis=-1).astype(np.float32)
    m = np.concatenate([lo_m, hi_m], axis=-1).astype(np.float32)
    return sc, m
