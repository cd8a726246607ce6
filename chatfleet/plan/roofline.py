"""Analytic step time for a model shape on an accelerator: a roofline plus fixed costs.

    step = overhead + max(bytes / (bandwidth * bw_eff), flops / (peak * flops_eff)) + comm
    bytes = (weights + KV read by every sequence) / tp
    flops = (2 * layer params * tokens + 2 * LM head * sampled rows + attention) / tp
    comm  = tensor parallel: two ring all-reduces of the step's activations per layer

The efficiencies are the fraction of the datasheet peaks a good serving stack reaches; they and
the per-step overhead are assumptions the plan prints. Calibrate on real hardware when you can.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from chatfleet.plan.hardware import AcceleratorProfile, ModelShape
from chatfleet.plan.step_model import StepShape, StepTimeModel


@dataclass(frozen=True)
class RooflineParams:
    tp: int = 1  # tensor-parallel degree: accelerators per replica
    overhead_s: float = 1.5e-3  # per step: scheduling, launches, sampling, output handling
    bandwidth_efficiency: float = 0.8
    flops_efficiency: float = 0.6
    allreduce_latency_s: float = 10e-6  # fixed cost of one all-reduce (tp > 1)
    memory_utilization: float = 0.9  # of accelerator memory given to weights + KV cache
    activation_reserve_bytes: float = 2e9  # per accelerator, kept for activations

    def __post_init__(self) -> None:
        if self.tp < 1 or not 0 < self.bandwidth_efficiency <= 1:
            raise ValueError("tp >= 1 and 0 < bandwidth_efficiency <= 1")
        if not 0 < self.flops_efficiency <= 1 or not 0 < self.memory_utilization <= 1:
            raise ValueError("efficiencies and memory_utilization must be in (0, 1]")


@dataclass(frozen=True)
class RooflineStepModel(StepTimeModel):
    shape: ModelShape
    accelerator: AcceleratorProfile
    params: RooflineParams = RooflineParams()
    kind = "roofline"

    def bytes_read(self, s: StepShape) -> float:
        kv_tokens = s.decode_context_tokens + s.prefill_context_tokens
        return (
            self.shape.weight_bytes + kv_tokens * self.shape.kv_bytes_per_token
        ) / self.params.tp

    def flops(self, s: StepShape) -> float:
        c = self.shape.config
        dense = 2 * self.shape.num_layer_params * s.num_batched_tokens
        head = 2 * self.shape.num_lm_head_params * s.num_sampled
        # QK^T and PV: 2 matmuls x 2 flops per multiply-add, per head dim, head and layer.
        pairs = s.prefill_attention_pairs + s.decode_context_tokens
        attention = 4 * c.num_layers * c.num_heads * c.head_dim * pairs
        return (dense + head + attention) / self.params.tp

    def comm_s(self, s: StepShape) -> float:
        tp = self.params.tp
        if tp == 1:
            return 0.0
        c = self.shape.config
        size = s.num_batched_tokens * c.hidden_size * 2  # bf16 activations
        ring = 2 * (tp - 1) / tp * size / self.accelerator.interconnect_bytes_s
        return 2 * c.num_layers * (ring + self.params.allreduce_latency_s)

    def step_time_s(self, shape: StepShape) -> float:
        p, a = self.params, self.accelerator
        memory_s = self.bytes_read(shape) / (a.memory_bandwidth_bytes_s * p.bandwidth_efficiency)
        compute_s = self.flops(shape) / (a.peak_flops * p.flops_efficiency)
        return p.overhead_s + max(memory_s, compute_s) + self.comm_s(shape)

    def kv_cache_bytes(self) -> float:
        """KV cache per replica: its accelerators' usable memory less weights and activations."""
        p = self.params
        usable = p.tp * (self.accelerator.memory_bytes * p.memory_utilization)
        weights = self.shape.num_params * self.shape.weight_bytes_per_param
        kv = usable - weights - p.tp * p.activation_reserve_bytes
        if kv <= 0:
            raise ValueError(
                f"{self.shape.name} ({weights / 1e9:.0f} GB of weights) does not fit on "
                f"{p.tp} x {self.accelerator.name}; raise --tp"
            )
        return kv

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "accelerator": dataclasses.asdict(self.accelerator),
            "model_shape": self.shape.name,
            **dataclasses.asdict(self.params),
        }
