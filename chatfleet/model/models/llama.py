"""Llama-family decoder (GQA, RoPE, RMSNorm, SwiGLU, optionally tied embeddings) over a paged
KV cache. Projections are fused (qkv, gate_up) so a layer is four matmuls.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from chatfleet.config import ModelConfig
from chatfleet.model.attention.base import AttentionBackend, write_kv
from chatfleet.model.forward_context import ForwardContext
from chatfleet.model.linear import Linear, make_linear


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


class LlamaLayer(torch.nn.Module):
    def __init__(
        self,
        config: ModelConfig,
        weights: dict[str, torch.Tensor],
        prefix: str,
        fmt: str,
        dtype: torch.dtype,
    ) -> None:
        super().__init__()
        w = lambda name: weights[f"{prefix}.{name}"]  # noqa: E731
        self.config = config
        self.attn_norm = torch.nn.Parameter(w("attn_norm").to(dtype), requires_grad=False)
        self.ffn_norm = torch.nn.Parameter(w("ffn_norm").to(dtype), requires_grad=False)
        self.qkv: Linear = make_linear(torch.cat([w("q"), w("k"), w("v")]), fmt)
        self.o: Linear = make_linear(w("o"), fmt)
        self.gate_up: Linear = make_linear(torch.cat([w("gate"), w("up")]), fmt)
        self.down: Linear = make_linear(w("down"), fmt)

    def forward(
        self,
        h: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: torch.Tensor,
        attn: AttentionBackend,
        ctx: ForwardContext,
    ) -> torch.Tensor:
        c = self.config
        num_tokens, eps = h.shape[0], c.rms_norm_eps
        qkv = self.qkv(F.rms_norm(h, (c.hidden_size,), self.attn_norm, eps))
        q_heads, kv_heads = c.num_heads, c.num_kv_heads
        # q and k get RoPE together: view them as (num_heads + num_kv_heads) heads.
        qk = qkv[:, : (q_heads + kv_heads) * c.head_dim].view(num_tokens, -1, c.head_dim)
        qk = apply_rope(qk, cos, sin)
        q, k = qk[:, :q_heads], qk[:, q_heads:]
        v = qkv[:, (q_heads + kv_heads) * c.head_dim :].view(num_tokens, kv_heads, c.head_dim)
        write_kv(kv_cache, k, v, ctx.slot_mapping)
        h = h + self.o(attn.forward(q, kv_cache, ctx))
        gate_up = self.gate_up(F.rms_norm(h, (c.hidden_size,), self.ffn_norm, eps))
        gate, up = gate_up.chunk(2, dim=-1)
        return h + self.down(F.silu(gate) * up)


class LlamaForCausalLM(torch.nn.Module):
    """forward(input_ids, ctx) -> hidden states; compute_logits(hidden) -> [N, vocab] fp32."""

    rope_cos: torch.Tensor
    rope_sin: torch.Tensor

    def __init__(
        self,
        config: ModelConfig,
        weights: dict[str, torch.Tensor],
        fmt: str,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.config = config
        self.embed = torch.nn.Parameter(weights["embed"].to(dtype), requires_grad=False)
        self.layers = torch.nn.ModuleList(
            LlamaLayer(config, weights, f"layers.{i}", fmt, dtype) for i in range(config.num_layers)
        )
        self.norm = torch.nn.Parameter(weights["norm"].to(dtype), requires_grad=False)
        self.lm_head: Linear = make_linear(weights.get("lm_head", weights["embed"]), fmt)
        self.to(device)
        cos, sin = rope_cos_sin(config, config.max_position_embeddings, device)
        self.register_buffer("rope_cos", cos.to(dtype), persistent=False)
        self.register_buffer("rope_sin", sin.to(dtype), persistent=False)

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,
        ctx: ForwardContext,
        kv_caches: list[torch.Tensor],
        attn: AttentionBackend,
    ) -> torch.Tensor:
        h = F.embedding(input_ids, self.embed)  # [T, hidden]
        cos = self.rope_cos[ctx.positions].unsqueeze(1)  # [T, 1, head_dim]
        sin = self.rope_sin[ctx.positions].unsqueeze(1)
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            h = layer(h, cos, sin, kv_cache, attn, ctx)
        return F.rms_norm(h, (self.config.hidden_size,), self.norm, self.config.rms_norm_eps)

    @torch.inference_mode()
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()
