"""How one layer's KV cache holds keys and values: a tensor [2, num_blocks, block_size,
num_kv_heads, width] (K then V).

fp32, fp16 and bf16 hold each head's values as they are (width = head_dim). int8 holds each
head as head_dim codes followed by the 4 bytes of its fp32 scale (one per token and head), so a
block is still one contiguous run that the block tables and prefix caching handle unchanged,
and the C++ kernels read a head from one place. The codes are of the head rotated by the
normalized Hadamard matrix: keys carry a few channels many times larger than the rest, which
one scale per head would leave the others a handful of levels for; rotated, each channel mixes
all of them. The kernels rotate queries alike (q . k is unchanged) and rotate their outputs
back; here `decode` undoes the rotation, so the Python backends read plain values.
"""

from __future__ import annotations

import functools

import torch

SCALE_BYTES = 4  # an int8 head's fp32 scale, after its codes


def head_width(head_dim: int, dtype: torch.dtype) -> int:
    """Elements one head takes in the cache."""
    return head_dim + SCALE_BYTES if dtype == torch.int8 else head_dim


def cache_shape(
    num_blocks: int, block_size: int, kv_heads: int, head_dim: int, dtype: torch.dtype
) -> tuple[int, ...]:
    if dtype == torch.int8 and head_dim & (head_dim - 1):
        raise ValueError(f"an int8 KV cache needs a power-of-two head_dim, not {head_dim}")
    return (2, num_blocks, block_size, kv_heads, head_width(head_dim, dtype))


def bytes_per_token(num_layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    """Cache bytes one token takes across all layers, K and V."""
    return 2 * num_layers * kv_heads * head_width(head_dim, dtype) * dtype.itemsize


@functools.cache
def _hadamard(n: int, device: torch.device) -> torch.Tensor:
    """H / sqrt(n), H the n x n Hadamard matrix in Sylvester's order: symmetric, its own
    inverse (csrc/attention.h `rotate` applies the same)."""
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)])
    return (h / n**0.5).to(device)


def encode(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Heads [..., head_dim] -> what the cache stores for them [..., width]."""
    if dtype != torch.int8:
        return x.to(dtype)
    x = x.float() @ _hadamard(x.shape[-1], x.device)
    top = x.abs().amax(-1, keepdim=True)
    inv = torch.where(top > 0, 127.0 / top, torch.zeros_like(top))
    codes = torch.round(x * inv).to(torch.int8)
    return torch.cat([codes, (top / 127.0).view(torch.int8)], dim=-1)


def decode(stored: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """What the cache holds for some heads [..., width] -> their values [..., head_dim]."""
    if stored.dtype != torch.int8:
        return stored.to(dtype)
    scale = stored[..., -SCALE_BYTES:].contiguous().view(torch.float32)
    rotated = stored[..., :-SCALE_BYTES].float() * scale
    return (rotated @ _hadamard(rotated.shape[-1], rotated.device)).to(dtype)
