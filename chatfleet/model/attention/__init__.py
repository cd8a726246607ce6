"""Attention backends, chosen by name from a registry."""

from chatfleet.model.attention.base import AttentionBackend, write_kv
from chatfleet.model.attention.reference import ReferenceAttention
from chatfleet.model.attention.torch_sdpa import SdpaAttention

BACKENDS: dict[str, type[AttentionBackend]] = {
    ReferenceAttention.name: ReferenceAttention,
    SdpaAttention.name: SdpaAttention,
}

__all__ = ["BACKENDS", "AttentionBackend", "write_kv"]
