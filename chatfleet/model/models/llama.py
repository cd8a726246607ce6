"""Llama-family decoder (GQA, RoPE, RMSNorm, SwiGLU, optionally tied embeddings and q/k/v
biases) over a paged KV cache: Llama, Mistral and Qwen2 (the differences are data in
ModelConfig, see chatfleet/model/architectures.py). Projections are fused (qkv, gate_up) so a
layer is four matmuls.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from chatfleet.config.engine_config import ModelConfig
from chatfleet.model.attention.base import AttentionBackend
from chatfleet.model.forward_context import ForwardContext
from chatfleet.model.fused_decode import FusedDecode
from chatfleet.model.linear import Linear, make_linear
from chatfleet.model.rope import rope_cos_sin
from chatfleet.model.weight_rows import WeightRows, rows_of


class LlamaLayer(torch.nn.Module):
    def __init__(
        self,
        config: ModelConfig,
        weights: Mapping[str, torch.Tensor],
        prefix: str,
        fmt: str,
        dtype: torch.dtype,
    ) -> None:
        super().__init__()
        w = lambda name: weights[f"{prefix}.{name}"]  # noqa: E731

        def rows(*names: str) -> WeightRows:  # fused projections: the parts' rows in turn
            return WeightRows.stack(*(rows_of(weights, f"{prefix}.{n}") for n in names))

        self.config = config
        self.attn_norm = torch.nn.Parameter(w("attn_norm").to(dtype), requires_grad=False)
        self.ffn_norm = torch.nn.Parameter(w("ffn_norm").to(dtype), requires_grad=False)
        self.qkv: Linear = make_linear(rows("q", "k", "v"), fmt)
        self.qkv_bias: torch.nn.Parameter | None = None
        if config.qkv_bias:
            bias = torch.cat([w("q_bias"), w("k_bias"), w("v_bias")]).to(dtype)
            self.qkv_bias = torch.nn.Parameter(bias, requires_grad=False)
        self.o: Linear = make_linear(rows("o"), fmt)
        self.gate_up: Linear = make_linear(rows("gate", "up"), fmt)
        self.down: Linear = make_linear(rows("down"), fmt)

    def forward(
        self,
        h: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: torch.Tensor,
        attn: AttentionBackend,
        ctx: ForwardContext,
    ) -> torch.Tensor:
        # Six calls per layer: each matmul takes the op before it (RMSNorm, SwiGLU) and the
        # residual add with it, so fast formats can fuse them (see Linear.fused).
        eps = self.config.rms_norm_eps
        qkv = self.qkv.fused(h, norm=self.attn_norm, eps=eps)
        if self.qkv_bias is not None:
            qkv = qkv + self.qkv_bias
        q = attn.rope_write_kv(qkv, cos, sin, kv_cache, ctx)
        h = self.o.fused(attn.forward(q, kv_cache, ctx), residual=h)
        gate_up = self.gate_up.fused(h, norm=self.ffn_norm, eps=eps)
        return self.down.fused(gate_up, swiglu=True, residual=h)


class LlamaForCausalLM(torch.nn.Module):
    """forward(input_ids, ctx) -> last layer's hidden states (before the final norm);
    compute_logits(hidden) -> [N, vocab] fp32."""

    rope_cos: torch.Tensor
    rope_sin: torch.Tensor

    def __init__(
        self,
        config: ModelConfig,
        weights: Mapping[str, torch.Tensor],
        fmt: str,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.config = config
        self.dtype = dtype
        # The embedding is held in the weight format like a matmul's weight and looked up row
        # by row (int8: a quarter of fp32); a tied one is its head's weight, held once.
        self.embed_table: Linear = make_linear(rows_of(weights, "embed"), fmt)
        self.layers = torch.nn.ModuleList(
            LlamaLayer(config, weights, f"layers.{i}", fmt, dtype) for i in range(config.num_layers)
        )
        self.norm = torch.nn.Parameter(weights["norm"].to(dtype), requires_grad=False)
        tied = "lm_head" not in weights
        self.lm_head: Linear = (
            self.embed_table if tied else make_linear(rows_of(weights, "lm_head"), fmt)
        )
        self.to(device)
        cos, sin = rope_cos_sin(config, config.max_position_embeddings, device)
        self.register_buffer("rope_cos", cos.to(dtype), persistent=False)
        self.register_buffer("rope_sin", sin.to(dtype), persistent=False)
        # Set by the runner where it applies (int8 weights, cpu attention).
        self.fused_decode: FusedDecode | None = None

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,
        ctx: ForwardContext,
        kv_caches: list[torch.Tensor],
        attn: AttentionBackend,
    ) -> torch.Tensor:
        h = self.embed(input_ids)  # [T, hidden]
        cos = self.rope_cos[ctx.positions]  # [T, head_dim]
        sin = self.rope_sin[ctx.positions]
        if self.fused_decode is not None and self.fused_decode.applies(ctx):
            h = self.fused_decode(h, cos, sin, ctx, kv_caches, attn.scale)
        else:
            for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
                h = layer(h, cos, sin, kv_cache, attn, ctx)
        return h

    def held_matrices(self) -> dict[str, torch.Tensor]:
        """Canonical name -> each matrix as the weight format holds it, in fp32, fused
        projections split back: what a reference model must hold to be compared exactly."""
        c = self.config
        held = {"embed": self.embed_table.dequantized_weight()}
        if self.lm_head is not self.embed_table:
            held["lm_head"] = self.lm_head.dequantized_weight()
        qkv_rows = [c.num_heads * c.head_dim] + [c.num_kv_heads * c.head_dim] * 2
        for i, module in enumerate(self.layers):
            layer: LlamaLayer = module  # type: ignore[assignment]  # ModuleList items are Modules
            q, k, v = layer.qkv.dequantized_weight().split(qkv_rows)
            gate, up = layer.gate_up.dequantized_weight().chunk(2)
            parts = {"q": q, "k": k, "v": v, "gate": gate, "up": up}
            parts |= {"o": layer.o.dequantized_weight(), "down": layer.down.dequantized_weight()}
            held |= {f"layers.{i}.{name}": matrix for name, matrix in parts.items()}
        return held

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_table.rows(input_ids).to(self.dtype)

    @torch.inference_mode()
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits of the last layer's hidden states; the final RMSNorm runs here, fused into
        the head's matmul, and only for the rows that sample."""
        return self.lm_head.fused(hidden, norm=self.norm, eps=self.config.rms_norm_eps).float()
