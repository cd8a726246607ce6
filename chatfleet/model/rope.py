"""Rotary position embeddings, HF "rotate-half" layout (pairs i and i + head_dim / 2)."""

from __future__ import annotations

import torch

from chatfleet.config.engine_config import ModelConfig


def rope_cos_sin(config: ModelConfig, max_len: int, device: torch.device):
    """cos/sin tables [max_len, head_dim] for rotate-half RoPE (HF layout)."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float().to(device), angles.sin().float().to(device)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, heads, D]; cos/sin [T, 1, D]. rotate_half(x) = [-x2, x1]."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin
