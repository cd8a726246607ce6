"""Which kernel multiplies an int8 layer's weights, per row count, chosen by measured cost.

The int8 VNNI kernel (csrc/qlinear.cpp) reads a quarter of fp32's bytes, so it wins while a
matmul is bound by reading weights (decode at a few streams). With many rows a matmul becomes
bound by arithmetic, and where the CPU multiplies bf16 in hardware (AMX tiles, AVX512-BF16)
oneDNN's bf16 GEMM does several times more per cycle than VNNI dot products. Where AMX is, the
int8 kernel can also take its block dot products from tiles ("amx-int8": the same exact int32
dots, so the very same output bits). Where the crossovers sit depends on the CPU, the thread
count and the layer's shape, so they are measured: at start-up each decoder layer shape is
timed with each candidate at 1, 2, 4, ... 512 rows, and a candidate is taken for a bucket only
where it is fastest and its output passes its check: bf16 within `ACCURACY_BOUND` of the fp32
product of the same weights, amx-int8 equal to the VNNI kernel's bit for bit. A CPU without
AMX or fast bf16 keeps int8 everywhere.

The plan is cached per CPU model, thread count, torch version and shapes (under
$CHATFLEET_CACHE_DIR, default ~/.cache/chatfleet), so a restart does not measure again. The
output head chooses only among the kernels that keep every bit (amx-int8 where there is AMX):
its fp32 logits feed logprobs and sampling, and a bf16 GEMM there rounds its output to bf16.

Batch invariance: with bf16 in a plan, a row's result depends on how many rows share its step,
so bf16 is a candidate only when `batch_invariant` is off; amx-int8 changes no bit and is a
candidate either way (`candidates`).
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

from chatfleet.model import kernels

logger = logging.getLogger(__name__)

BUCKETS = tuple(2**i for i in range(10))  # 1 .. 512 rows
ALL_BUCKETS = (1 << len(BUCKETS)) - 1  # a tile mask with every bucket's bit (BlockInt8Linear)
ACCURACY_BOUND = 1e-2  # relative RMS error of a kernel's output against fp32
KERNELS = ("int8", "amx-int8", "bf16")


def candidates(batch_invariant: bool) -> tuple[str, ...]:
    """The kernels a plan may choose from on this CPU: int8, amx-int8 where this process may
    use AMX tiles, and bf16 unless rows must come out the same whatever the batch."""
    return ("int8",) + ("amx-int8",) * kernels.amx_tiles() + ("bf16",) * (not batch_invariant)


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
        for key, picks in raw.items():
            n, k, bits = (int(v) for v in key.split("x"))
            choices[(n, k, bits)] = tuple(picks)
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


def measure(linear, allowed: Sequence[str] = KERNELS, reps: int = 5) -> tuple[str, ...]:
    """Time `linear` (a BlockInt8Linear) with each kernel `allowed` at each bucket; the fastest
    that passes its check, per bucket. Activations are random rows of the layer's input
    width."""
    dense = linear.dequantized_weight()  # [out, in] fp32
    dense_bf16 = dense.to(torch.bfloat16)
    runs = {
        "int8": lambda x: linear.int8(x, tile_mask=0),
        "amx-int8": lambda x: linear.int8(x, tile_mask=ALL_BUCKETS),
        "bf16": lambda x: F.linear(x.bfloat16(), dense_bf16).float(),
    }
    checks = {
        "int8": lambda x: True,
        "amx-int8": lambda x: torch.equal(runs["amx-int8"](x), runs["int8"](x)),
        "bf16": lambda x: _relative_error(runs["bf16"](x), F.linear(x, dense)) <= ACCURACY_BOUND,
    }
    gen = torch.Generator().manual_seed(0)
    picks = []
    for rows in BUCKETS:
        x = torch.randn(rows, linear.in_features, generator=gen)
        times = {k: _median_ms(lambda k=k, x=x: runs[k](x), reps) for k in allowed if checks[k](x)}
        picks.append(min(times, key=times.__getitem__))
    return tuple(picks)


def _cache_path(
    shapes: Sequence[tuple[int, int, int]], num_threads: int, allowed: Sequence[str]
) -> str:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags"))]
            cpu = "".join(sorted(set(lines)))
    except OSError:
        cpu = platform.processor()
    key = json.dumps([cpu, num_threads, torch.__version__, sorted(shapes), list(allowed)])
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    root = os.environ.get("CHATFLEET_CACHE_DIR") or os.path.expanduser("~/.cache/chatfleet")
    return os.path.join(root, "matmul_plans", f"{digest}.json")


def load_or_measure(
    linears: Sequence, num_threads: int, allowed: Sequence[str] = ("int8", "bf16")
) -> MatmulPlan:
    """The plan for these layers (BlockInt8Linear) on this CPU, choosing among the kernels
    `allowed` (see `candidates`): cached, else measured once per distinct shape and cached."""
    by_shape = {plan_key(m): m for m in linears}
    path = _cache_path(list(by_shape), num_threads, allowed)
    if os.path.isfile(path):
        with open(path) as f:
            return MatmulPlan.from_json(f.read())
    plan = MatmulPlan({shape: measure(m, allowed) for shape, m in by_shape.items()})
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(plan.to_json())
    os.replace(tmp, path)  # atomic: replicas starting together never read half a file
    logger.info(
        "matmul plan measured (amx-int8 from %s rows, bf16 from %s): %s",
        plan.min_rows("amx-int8"),
        plan.min_rows("bf16"),
        path,
    )
    return plan
