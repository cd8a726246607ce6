"""Attention backends, chosen by name from a registry."""

import torch

from chatfleet.model.attention.base import AttentionBackend, write_kv
from chatfleet.model.attention.cpu_paged import CpuPagedAttention, load_kernel
from chatfleet.model.attention.reference import ReferenceAttention
from chatfleet.model.attention.torch_sdpa import SdpaAttention

BACKENDS: dict[str, type[AttentionBackend]] = {
    ReferenceAttention.name: ReferenceAttention,
    SdpaAttention.name: SdpaAttention,
    CpuPagedAttention.name: CpuPagedAttention,
}


def resolve_backend(name: str, device: torch.device, kv_dtype: torch.dtype) -> str:
    """'auto' -> the C++ paged kernel on CPU (fp32 / fp16 cache) when it builds, else sdpa."""
    if name != "auto":
        if name not in BACKENDS:
            raise ValueError(f"unknown attention backend {name!r}; known: {sorted(BACKENDS)}")
        return name
    cpu_dtypes = (torch.float32, torch.float16)
    if device.type == "cpu" and kv_dtype in cpu_dtypes and load_kernel() is not None:
        return CpuPagedAttention.name
    return SdpaAttention.name


__all__ = ["BACKENDS", "AttentionBackend", "load_kernel", "resolve_backend", "write_kv"]
