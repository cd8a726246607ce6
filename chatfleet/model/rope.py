"""Rotary position embeddings, HF "rotate-half" layout (pairs i and i + head_dim / 2)."""

from __future__ import annotations

import math

import torch

from chatfleet.config.engine_config import ModelConfig, RopeScaling


def inverse_frequencies(config: ModelConfig) -> torch.Tensor:
    """[head_dim / 2] float64: pair i turns by position * inv_freq[i], scaled if configured."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    scaling = config.rope_scaling
    if scaling is None:
        return inv_freq
    if scaling.kind == "linear":
        return inv_freq / scaling.factor
    if scaling.kind == "factors":
        return inv_freq / torch.tensor(scaling.factors, dtype=torch.float64)
    return _llama3(inv_freq, scaling)


def _llama3(inv_freq: torch.Tensor, s: RopeScaling) -> torch.Tensor:
    """Long wavelengths (past original / low_freq_factor) slowed by `factor`, short ones
    (under original / high_freq_factor) kept, the band between interpolated:

        wavelength:   short ........ | ...... band ...... | ........ long
        frequency:    inv_freq       |  (1-t) f/factor + t f  |  inv_freq / factor
                                     t = (original / wavelength - low) / (high - low)
    """
    original = s.original_max_position_embeddings
    wavelength = 2 * math.pi / inv_freq
    t = (original / wavelength - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    blended = (1 - t) * inv_freq / s.factor + t * inv_freq
    out = torch.where(wavelength > original / s.low_freq_factor, inv_freq / s.factor, blended)
    return torch.where(wavelength < original / s.high_freq_factor, inv_freq, out)


def rope_cos_sin(config: ModelConfig, max_len: int, device: torch.device):
    """cos/sin tables [max_len, head_dim] for rotate-half RoPE (HF layout)."""
    inv_freq = inverse_frequencies(config)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float().to(device), angles.sin().float().to(device)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, heads, D]; cos/sin [T, 1, D]. rotate_half(x) = [-x2, x1]."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin
