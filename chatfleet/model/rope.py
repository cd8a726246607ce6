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
    if scaling.kind == "yarn":
        return _yarn(inv_freq, scaling, dim, config.rope_theta)
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


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature for a context stretched `factor` times."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _yarn(inv_freq: torch.Tensor, s: RopeScaling, dim: int, base: float) -> torch.Tensor:
    """Dimension pairs whose frequency turns more than beta_fast times over the original
    context are kept (extrapolated), those under beta_slow divided by `factor`
    (interpolated), a linear ramp over the pairs between:

        pair:     0 ... low | ..... ramp ..... | high ... dim / 2
        keeps:    inv_freq  | blend by (i - low) / (high - low) | inv_freq / factor
    """

    def pair_turning(rotations: float) -> float:  # the pair index turning `rotations` times
        turns = s.original_max_position_embeddings / (rotations * 2 * math.pi)
        return dim * math.log(turns) / (2 * math.log(base))

    low, high = pair_turning(s.beta_fast), pair_turning(s.beta_slow)
    if s.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / max(high - low, 1e-3)).clamp(0, 1)
    return inv_freq / s.factor * ramp + inv_freq * (1 - ramp)


def rope_cos_sin(config: ModelConfig, max_len: int, device: torch.device):
    """cos/sin tables [max_len, head_dim] for rotate-half RoPE (HF layout); YaRN's attention
    factor is folded in (q and k each scaled by it, so the logits by its square)."""
    inv_freq = inverse_frequencies(config)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    scaling = config.rope_scaling
    scale = scaling.attention_factor if scaling is not None and scaling.kind == "yarn" else 1.0
    return (scale * angles.cos()).float().to(device), (scale * angles.sin()).float().to(device)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, heads, D]; cos/sin [T, 1, D]. rotate_half(x) = [-x2, x1]."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin
