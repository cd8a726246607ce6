"""Weight formats for the matmuls, chosen by measurement (docs/benchmarks.md).

On this CPU class (AVX-512 VNNI, no AMX / AVX512-BF16) bf16 and torch's int4 weight-only
kernels are slower than fp32. W8A8 (`torch._int_mm`, per-token activation scales) is ~3x faster
than fp32, but per-token activation rounding is chaotic across 30 layers: logprobs move by up
to ~0.7 when the attention arithmetic changes in the last float bit, so greedy outputs depend
on batch composition. fp32 is therefore the default on CPU and int8 an opt-in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class Linear(torch.nn.Module):
    """y = x @ W^T for x [T, in] in the compute dtype."""

    fmt = "base"

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape

    def dequantized_weight(self) -> torch.Tensor:
        """The weight the format actually multiplies by, as fp32 [out, in] (for references)."""
        raise NotImplementedError


class DenseLinear(Linear):
    """fp32 or bf16 weights through the platform GEMM (oneDNN / MKL / cuBLAS)."""

    def __init__(self, weight: torch.Tensor, dtype: torch.dtype) -> None:
        super().__init__(weight)
        self.fmt = {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]
        self.weight = torch.nn.Parameter(weight.to(dtype).contiguous(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(self.weight.dtype), self.weight).to(x.dtype)

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight.float()


def quantize_rows_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: x ~= q * scale, scale [rows, 1]."""
    scale = x.abs().amax(dim=-1, keepdim=True).clamp_(min=1e-12) / 127.0
    return torch.round(x / scale).to(torch.int8), scale


class Int8Linear(Linear):
    """W8A8: per-output-channel int8 weights, per-token int8 activations, int32 accumulate."""

    fmt = "int8"
    qweight: torch.Tensor
    wscale: torch.Tensor

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__(weight)
        q, scale = quantize_rows_int8(weight.float())
        # _int_mm runs fastest with the weight stored [out, in] and passed transposed.
        self.register_buffer("qweight", q.contiguous())
        self.register_buffer("wscale", scale.reshape(1, -1).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq, xscale = quantize_rows_int8(x.float())
        acc = torch._int_mm(xq, self.qweight.t())  # [T, out] int32
        return acc.float().mul_(xscale).mul_(self.wscale).to(x.dtype)

    def dequantized_weight(self) -> torch.Tensor:
        return self.qweight.float() * self.wscale.t()


def make_linear(weight: torch.Tensor, fmt: str) -> Linear:
    if fmt == "int8":
        return Int8Linear(weight)
    return DenseLinear(weight, torch.bfloat16 if fmt == "bf16" else torch.float32)


def resolve_weight_format(fmt: str, device: torch.device) -> str:
    """'auto' -> fp32 on CPU (see module docstring), bf16 on CUDA."""
    if fmt != "auto":
        return fmt
    return "bf16" if device.type == "cuda" else "fp32"
