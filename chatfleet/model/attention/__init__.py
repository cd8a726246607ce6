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


def resolve_backend(
    name: str,
    device: torch.device,
    kv_dtype: torch.dtype,
    compute_dtype: torch.dtype,
    head_dim: int,
    group: int,
) -> str:
    """'auto' -> the C++ paged kernel on CPU (fp32 queries, fp32 / fp16 / int8 cache, a head
    shape it has) when it builds, else sdpa. ValueError for a named backend that does not exist
    or cannot run."""
    if name != "auto":
        if name not in BACKENDS:
            raise ValueError(f"unknown attention backend {name!r}; known: {sorted(BACKENDS)}")
        if name == CpuPagedAttention.name and not CpuPagedAttention.supports(head_dim, group):
            raise ValueError(f"the cpu attention kernel has no head_dim {head_dim} / group {group}")
        if name == CpuPagedAttention.name and compute_dtype != torch.float32:
            raise ValueError(f"the cpu attention kernel has no {compute_dtype} queries")
        return name
    cpu_dtypes = (torch.float32, torch.float16, torch.int8)
    if (
        device.type == "cpu"
        and compute_dtype == torch.float32  # bf16 weights give bf16 queries: sdpa's
        and kv_dtype in cpu_dtypes
        and CpuPagedAttention.supports(head_dim, group)
        and load_kernel() is not None
    ):
        return CpuPagedAttention.name
    return SdpaAttention.name


__all__ = ["BACKENDS", "AttentionBackend", "load_kernel", "resolve_backend", "write_kv"]
