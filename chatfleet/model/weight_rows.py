"""A weight matrix read a block of rows at a time.

The runtime weight formats are built from fp32 values, and a whole fp32 copy of a large matrix
(a vocabulary-sized embedding, a fused gate/up projection) is several times what the file holds
of it. Built from blocks of rows, a format holds one block's fp32 values at a time.

    file tensor(s) --read rows [a, b)--> fp32 block --> int8 codes / bf16 rows of the format
                   --encode rows [a, b)--> codes, scales, zeros (block formats the int8 kernel
                                           holds as they are: see modelfile/gguf_blocks.py)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch

BLOCK_ROWS = 2048  # at most, per block

ReadRows = Callable[[int, int], torch.Tensor]  # (start, stop) -> fp32 [stop - start, cols]
# codes uint8 [rows, cols / 32, 32], scale and zero [rows, cols / 32], or [rows, cols / 32, 2]
# with one per 16-value half: value = scale * code + zero
Codes = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
EncodeRows = Callable[[int, int], Codes]
Part = tuple[int, ReadRows, EncodeRows | None]  # rows, their reader, their encoder if any


@dataclass(frozen=True)
class WeightRows:
    """[rows, cols]: parts stacked in order, each (its row count, its reader, its encoder)."""

    shape: tuple[int, int]
    parts: tuple[Part, ...]
    align: int = 1  # blocks start and end on multiples of this (a reader that needs whole heads)
    # The codes the matrix is held in are below 2**code_bits: those of the parts that come
    # encoded, 8 bits fitted to those that do not. None: unknown until every row is fitted.
    code_bits: int | None = None

    @staticmethod
    def of(tensor: torch.Tensor) -> WeightRows:
        rows, cols = tensor.shape
        return WeightRows((rows, cols), ((rows, lambda a, b: tensor[a:b].float(), None),))

    @staticmethod
    def stack(*mats: WeightRows) -> WeightRows:
        """Rows of each in turn, as torch.cat(dim=0) would give them."""
        cols = {m.shape[1] for m in mats}
        if len(cols) != 1:
            raise ValueError(f"cannot stack matrices of {sorted(cols)} columns")
        rows = sum(m.shape[0] for m in mats)
        parts = tuple(p for m in mats for p in m.parts)
        bits = [m.code_bits for m in mats]
        code_bits = None if None in bits else max(b for b in bits if b is not None)
        return WeightRows((rows, cols.pop()), parts, math.lcm(*(m.align for m in mats)), code_bits)

    def blocks(self, rows: int = BLOCK_ROWS) -> Iterator[torch.Tensor]:
        """fp32 blocks of about `rows` rows (a multiple of `align`), top to bottom."""
        for read, _, start, stop in self._spans(rows):
            yield read(start, stop)

    def codes_or_blocks(self, rows: int = BLOCK_ROWS) -> Iterator[Codes | torch.Tensor]:
        """As `blocks`, but encoded where a part has an encoder."""
        for read, encode, start, stop in self._spans(rows):
            yield encode(start, stop) if encode is not None else read(start, stop)

    def _spans(self, rows: int) -> Iterator[tuple[ReadRows, EncodeRows | None, int, int]]:
        rows = max(rows // self.align, 1) * self.align
        for count, read, encode in self.parts:
            for start in range(0, count, rows):
                yield read, encode, start, min(start + rows, count)

    def whole(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        out = torch.empty(self.shape, dtype=dtype)
        at = 0
        for block in self.blocks():
            out[at : at + len(block)] = block
            at += len(block)
        return out


def rows_of(weights: Mapping[str, torch.Tensor], name: str) -> WeightRows:
    """`weights[name]` as rows: read in blocks where the mapping can (the loader's), whole
    otherwise."""
    read_rows = getattr(weights, "rows", None)
    return read_rows(name) if read_rows is not None else WeightRows.of(weights[name])


def code_values(codes: Codes) -> torch.Tensor:
    """fp32 [rows, cols]: scale * code + zero, per block or per half block."""
    c, scale, zero = codes
    rows, nb = scale.shape[:2]
    halves = scale.shape[2] if scale.dim() == 3 else 1
    values = c.reshape(rows, nb, halves, -1).float() * scale.reshape(rows, nb, halves, 1)
    return (values + zero.reshape(rows, nb, halves, 1)).reshape(rows, -1)
