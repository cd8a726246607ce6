"""A small, fast GGUF reader: metadata as Python values, tensors as numpy views.

NOTE: `gguf.GGUFReader` builds numpy views for every array item, which takes seconds on a
large vocabulary at every start; this reader parses the same header as Python values and
memory-maps the tensor data.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from chatfleet.errors import UnsupportedModelError

_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    qtype: GGMLQuantizationType
    shape: tuple[int, ...]  # numpy order: [rows, cols]
    data: np.ndarray  # raw bytes [rows, bytes_per_row] or typed array for F32/F16
    offset: int = 0  # where data starts in the file
    file_map: Any = field(default=None, repr=False, compare=False)  # the mmap.mmap of the file

    def release(self) -> None:
        """Drop this tensor's pages from the process (the page cache keeps them): once it is
        converted, its file bytes need not count toward the process's memory."""
        if self.file_map is None:
            return
        start = self.offset // mmap.PAGESIZE * mmap.PAGESIZE
        self.file_map.madvise(mmap.MADV_DONTNEED, start, self.offset + self.data.nbytes - start)


class _Cursor:
    def __init__(self, buf: memoryview) -> None:
        self.buf, self.pos = buf, 0

    def scalar(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.scalar("<Q")
        s = bytes(self.buf[self.pos : self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return s

    def value(self, vtype: int) -> Any:
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item_type, count = self.scalar("<I"), self.scalar("<Q")
            if item_type in _SCALARS and item_type != 7:
                dtype = np.dtype(_SCALARS[item_type])
                arr = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
                self.pos += dtype.itemsize * count
                return arr.tolist()
            return [self.value(item_type) for _ in range(count)]
        return self.scalar(_SCALARS[vtype])


def read_gguf(path: str, with_tensors: bool = True) -> tuple[dict[str, Any], list[GGUFTensor]]:
    """Returns (metadata, tensors). Tensor data are read-only views of a memory map."""
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    cur = _Cursor(memoryview(mm))  # type: ignore[arg-type]
    if bytes(cur.buf[:4]) != b"GGUF":
        raise ValueError(f"{path} is not a GGUF file")
    cur.pos = 4
    version = cur.scalar("<I")
    if version < 2:
        raise ValueError(f"GGUF version {version} is not supported")
    num_tensors, num_kv = cur.scalar("<Q"), cur.scalar("<Q")
    meta: dict[str, Any] = {}
    for _ in range(num_kv):
        key = cur.string()
        meta[key] = cur.value(cur.scalar("<I"))
    if not with_tensors:
        return meta, []
    infos = []
    for _ in range(num_tensors):
        name = cur.string()
        dims = [cur.scalar("<Q") for _ in range(cur.scalar("<I"))]
        code = cur.scalar("<I")
        if code not in GGMLQuantizationType._value2member_map_:
            raise UnsupportedModelError(f"tensor {name}: unknown GGUF weight type {code}")
        infos.append((name, GGMLQuantizationType(code), dims, cur.scalar("<Q")))
    alignment = int(meta.get("general.alignment", 32))
    data_start = (cur.pos + alignment - 1) // alignment * alignment
    tensors = []
    for name, qtype, dims, offset in infos:
        block, block_bytes = GGML_QUANT_SIZES[qtype]
        cols, rows = dims[0], int(np.prod(dims[1:])) if len(dims) > 1 else 1
        row_bytes = cols // block * block_bytes
        start = data_start + offset
        raw = mm[start : start + rows * row_bytes].reshape(rows, row_bytes)
        if qtype == GGMLQuantizationType.F32:
            raw = raw.view(np.float32)
        elif qtype == GGMLQuantizationType.F16:
            raw = raw.view(np.float16)
        shape = (cols,) if len(dims) == 1 else (rows, cols)
        data = raw.reshape(shape) if len(dims) == 1 else raw
        tensors.append(GGUFTensor(name, qtype, shape, data, start, getattr(mm, "_mmap", None)))
    return meta, tensors
