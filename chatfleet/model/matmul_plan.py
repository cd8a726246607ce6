"""Which kernel multiplies an int8 layer's weights, per row count, chosen by measured cost.

The int8 VNNI kernel (csrc/qlinear.cpp) reads a quarter of fp32's bytes, so it wins while a
matmul is bound by reading weights (decode at a few streams). With many rows a matmul becomes
bound by arithmetic, and where the CPU multiplies bf16 in hardware (AMX tiles, AVX512-BF16)
oneDNN's bf16 GEMM does several times more per cycle than VNNI dot products. Where that
crossover sits depends on the CPU, the thread count and the layer's shape, so it is measured:
at start-up each decoder layer shape is timed with both kernels at 1, 2, 4, ... 512 rows, and
bf16 is taken for a bucket only where it is faster and its output is within `ACCURACY_BOUND` of
the fp32 product of the same weights. A CPU without fast bf16 keeps int8 everywhere.

The plan is cached per CPU model, thread count, torch version and shapes (under
$CHATFLEET_CACHE_DIR, default ~/.cache/chatfleet), so a restart does not measure again. The
output head is left out: its fp32 logits feed logprobs and sampling, and a bf16 GEMM here rounds
its output to bf16.

Batch invariance: with a plan, a row's result depends on how many rows share its step. The
engine applies a plan only when `batch_invariant` is off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

BUCKETS = tuple(2**i for i in range(10))  # 1 .. 512 rows
ACCURACY_BOUND = 1e-2  # relative RMS error of a kernel's output against fp32
KERNELS = ("int8", "bf16")


def bucket_index(rows: int) -> int:
    """The bucket a row count falls in: the smallest power of two >= rows, capped at 512."""
    return min(max(rows - 1, 0).bit_length(), len(BUCKETS) - 1)


def plan_key(linear) -> tuple[int, int, int]:
    """(out, in, code bits): 4-bit codes halve what the int8 kernel reads, so the same shape
    can choose differently at each width."""
    return (linear.out_features, linear.in_features, linear.bits)


@dataclass(frozen=True)
class MatmulPlan:
    """Per weight (out, in, code bits), see plan_key: the kernel of each bucket, in BUCKETS
    order."""

    choices: dict[tuple[int, int, int], tuple[str, ...]]

    def min_rows(self, kernel: str) -> int | None:
        """The fewest rows for which any shape uses `kernel` (None: never)."""
        rows = [BUCKETS[i] for c in self.choices.values() for i, k in enumerate(c) if k == kernel]
        return min(rows, default=None)

    def to_json(self) -> str:
        return json.dumps({"x".join(map(str, key)): list(c) for key, c in self.choices.items()})

    @classmethod
    def from_json(cls, text: str) -> MatmulPlan:
        raw = json.loads(text)
        choices = {}
        for key, kernels in raw.items():
            n, k, bits = (int(v) for v in key.split("x"))
            choices[(n, k, bits)] = tuple(kernels)
        return cls(choices)


def _median_ms(fn, reps: int) -> float:
    fn()  # warm: oneDNN builds its primitive on the first call of a shape
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3


def _relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


def measure(linear, reps: int = 5) -> tuple[str, ...]:
    """Time `linear` (a BlockInt8Linear) and its bf16 twin at each bucket; the kernel per
    bucket. Activations are random rows of the layer's input width."""
    dense = linear.dequantized_weight()  # [out, in] fp32
    dense_bf16 = dense.to(torch.bfloat16)
    gen = torch.Generator().manual_seed(0)
    picks = []
    for rows in BUCKETS:
        x = torch.randn(rows, linear.in_features, generator=gen)
        ref = F.linear(x, dense)
        accurate = _relative_error(F.linear(x.bfloat16(), dense_bf16).float(), ref)
        int8_ms = _median_ms(lambda x=x: linear.int8(x), reps)
        bf16_ms = _median_ms(lambda x=x: F.linear(x.bfloat16(), dense_bf16).float(), reps)
        picks.append("bf16" if accurate <= ACCURACY_BOUND and bf16_ms < int8_ms else "int8")
    return tuple(picks)


def _cache_path(shapes: Sequence[tuple[int, int, int]], num_threads: int) -> str:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags"))]
            cpu = "".join(sorted(set(lines)))
    except OSError:
        cpu = platform.processor()
    key = json.dumps([cpu, num_threads, torch.__version__, sorted(shapes)])
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    root = os.environ.get("CHATFLEET_CACHE_DIR") or os.path.expanduser("~/.cache/chatfleet")
    return os.path.join(root, "matmul_plans", f"{digest}.json")


def load_or_measure(linears: Sequence, num_threads: int) -> MatmulPlan:
    """The plan for these layers (BlockInt8Linear) on this CPU: cached, else measured once
    per distinct shape and cached."""
    by_shape = {plan_key(m): m for m in linears}
    path = _cache_path(list(by_shape), num_threads)
    if os.path.isfile(path):
        with open(path) as f:
            return MatmulPlan.from_json(f.read())
    plan = MatmulPlan({shape: measure(m) for shape, m in by_shape.items()})
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(plan.to_json())
    os.replace(tmp, path)  # atomic: replicas starting together never read half a file
    logger.info("matmul plan measured (bf16 from %s rows): %s", plan.min_rows("bf16"), path)
    return plan
