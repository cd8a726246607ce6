"""A plain full-recompute forward pass (no KV cache, no paging, no batching) used as the
ground truth for the engine. It shares only the weights and their matmul format with the
engine; RoPE, attention and the layer wiring are written independently here.
"""

from __future__ import annotations

import torch

from chatfleet.model.models.llama import LlamaForCausalLM


def _rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """x [S, heads, D] -> rotated, computed with complex numbers (pairs i and i + D/2)."""
    seq, _, dim = x.shape
    f64 = {"dtype": torch.float64, "device": x.device}
    freqs = 1.0 / theta ** (torch.arange(0, dim, 2, **f64) / dim)
    angles = torch.outer(torch.arange(seq, **f64), freqs)
    rot = torch.polar(torch.ones_like(angles), angles)[:, None, :]  # [S, 1, D/2]
    pairs = torch.complex(x[..., : dim // 2].double(), x[..., dim // 2 :].double()) * rot
    return torch.cat([pairs.real, pairs.imag], dim=-1).to(x.dtype)


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


@torch.inference_mode()
def reference_logits(model: LlamaForCausalLM, token_ids: list[int]) -> torch.Tensor:
    """Logits [S, vocab]: row i predicts the token after token_ids[: i + 1] (causal mask)."""
    c = model.config
    h = model.embed(torch.tensor(token_ids, device=model.rope_cos.device)).float()
    seq = h.shape[0]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=h.device).tril()
    group = c.num_heads // c.num_kv_heads
    for layer in model.layers:
        qkv = layer.qkv(_rms(h, layer.attn_norm.float(), c.rms_norm_eps))
        q, k, v = qkv.split(
            [c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.num_kv_heads * c.head_dim],
            dim=-1,
        )
        q = _rope(q.reshape(seq, c.num_heads, c.head_dim), c.rope_theta)
        k = _rope(k.reshape(seq, c.num_kv_heads, c.head_dim), c.rope_theta)
        k = k.repeat_interleave(group, dim=1)
        v = v.reshape(seq, c.num_kv_heads, c.head_dim).repeat_interleave(group, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k) / c.head_dim**0.5
        scores = scores.masked_fill(~causal, float("-inf"))
        attn = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(seq, -1)
        h = h + layer.o(attn)
        gate, up = layer.gate_up(_rms(h, layer.ffn_norm.float(), c.rms_norm_eps)).chunk(2, -1)
        h = h + layer.down(torch.nn.functional.silu(gate) * up)
    return model.lm_head(_rms(h, model.norm.float(), c.rms_norm_eps)).float()
