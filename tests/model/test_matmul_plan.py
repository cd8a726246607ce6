"""The matmul plan (model/matmul_plan.py): measured per shape and row bucket, cached, applied
by row count, and the real model's accuracy on the bf16 path against fp32."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from chatfleet.bench.agreement import greedy_agreement
from chatfleet.config.engine_config import SchedulerConfig
from chatfleet.model import kernels, matmul_plan
from chatfleet.model.linear import BlockInt8Linear
from chatfleet.model.matmul_plan import BUCKETS, MatmulPlan, bucket_index, load_or_measure
from tests.conftest import make_llm

pytestmark = pytest.mark.skipif(
    kernels.load("qlinear") is None, reason="int8 kernel needs AVX-512 VNNI and a compiler"
)
# The real model's decoder shapes (qkv, o, gate_up, down) and the default thread count.
# The default model's decoder matmuls (plan keys): Q4_1 in the file, held as 4-bit codes.
SMOLLM2_SHAPES = [(960, 576, 4), (576, 576, 4), (3072, 576, 4), (576, 1536, 4)]


def test_row_counts_fall_in_power_of_two_buckets() -> None:
    assert [bucket_index(r) for r in (1, 2, 3, 4, 5, 64, 65, 512, 4096)] == [
        0, 1, 2, 2, 3, 6, 7, 9, 9,
    ]  # fmt: skip


def test_the_plan_is_measured_once_then_read_from_the_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CHATFLEET_CACHE_DIR", str(tmp_path))
    lin = BlockInt8Linear(torch.randn(64, 128) * 0.05)
    # The same shape in 4-bit codes reads half the bytes: it is measured on its own.
    q = torch.randint(0, 16, (64, 4, 32))
    q[..., 0], q[..., 1] = 0, 15  # a Q4_1 grid: 16 levels, both ends used in every block
    lin4 = BlockInt8Linear(q.reshape(64, 128).float() * 0.01)
    assert (lin.bits, lin4.bits) == (8, 4)
    plan = load_or_measure([lin, lin4], num_threads=1)
    assert set(plan.choices) == {(64, 128, 8), (64, 128, 4)}
    assert len(plan.choices[(64, 128, 8)]) == len(BUCKETS)
    assert set(plan.choices[(64, 128, 4)]) <= set(matmul_plan.KERNELS)
    (path,) = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path) for f in fs]
    # A plan written there is what the next start uses, without measuring.
    planted = MatmulPlan(
        {(64, 128, 8): ("int8",) * 3 + ("bf16",) * 7, (64, 128, 4): ("int8",) * 10}
    )
    with open(path, "w") as f:
        f.write(planted.to_json())
    assert load_or_measure([lin, lin4], num_threads=1) == planted
    assert planted.min_rows("bf16") == 8 and planted.min_rows("int8") == 1


@pytest.mark.parametrize("prologue", ["norm", "swiglu"])
def test_each_bucket_runs_its_kernel_with_the_prologues(prologue: str) -> None:
    torch.manual_seed(0)
    weight = torch.randn(96, 256) * 0.05
    lin, reference = BlockInt8Linear(weight), BlockInt8Linear(weight)
    lin.use_plan(("int8",) * 4 + ("bf16",) * 6)  # bf16 from 9 rows
    dense = lin.dequantized_weight()
    norm = torch.rand(256) + 0.5 if prologue == "norm" else None
    swiglu = prologue == "swiglu"
    residual = torch.randn(20, 96)
    for rows in (8, 20):
        x = torch.randn(rows, 512 if swiglu else 256)
        args = (norm, 1e-5, swiglu, residual[:rows])
        got, int8 = lin.fused(x, *args), reference.fused(x, *args)
        if rows <= 8:  # the VNNI kernel, bit for bit
            assert torch.equal(got, int8)
            continue
        # bf16 weights and activations, fp32 result
        h = F.rms_norm(x, (256,), norm, 1e-5) if norm is not None else x
        if swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        want = residual[:rows] + F.linear(h, dense)
        assert not torch.equal(got, int8)
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2 * want.abs().max().item())


def test_a_batch_invariant_engine_plans_only_kernels_that_keep_every_bit(llm) -> None:
    """Where rows must not depend on the batch (the default), bf16 is no candidate; AMX tiles,
    which give the VNNI kernel's very bits, are, where this process may use them. Without them
    there is nothing to choose and no plan is measured."""
    assert llm.engine.config.batch_invariant
    plan = llm.engine.runner.matmul_plan
    if not kernels.amx_tiles():
        assert plan is None
        return
    assert plan is not None
    assert {k for picks in plan.choices.values() for k in picks} <= {"int8", "amx-int8"}


def _plant_bf16_everywhere(tmp_path, monkeypatch) -> int:
    """A cached plan of bf16 at every row count (the engine then does not measure)."""
    monkeypatch.setenv("CHATFLEET_CACHE_DIR", str(tmp_path))
    threads = kernels.num_threads()
    path = matmul_plan._cache_path(SMOLLM2_SHAPES, threads, matmul_plan.candidates(False))
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        f.write(MatmulPlan({s: ("bf16",) * len(BUCKETS) for s in SMOLLM2_SHAPES}).to_json())
    return threads


def test_the_bf16_path_on_the_real_model_stays_close_to_fp32(tmp_path, monkeypatch) -> None:
    """Every decoder matmul in bf16 (a planted plan, no fused decode step), prefill and decode
    alike: greedy tokens follow fp32's for most of 8 chat replies x 32 tokens, and the
    logprobs of the tokens both chose differ by less than 0.1 (int8's stay under 0.01)."""
    threads = _plant_bf16_everywhere(tmp_path, monkeypatch)
    planned = make_llm(batch_invariant=False, num_threads=threads, fused_decode=False)
    assert planned.engine.runner.matmul_plan.min_rows("bf16") == 1
    assert planned.engine.runner.model.lm_head.plan is None  # the head's logits: never bf16
    fp32 = make_llm(weight_format="fp32", num_threads=threads)
    check = greedy_agreement(planned, fp32, max_tokens=32)
    assert check.agreed >= 0.75 * 8 * 32, f"{check.agreed} of 256 greedy tokens agree"
    assert check.max_logprob_diff < 0.1, f"logprobs differ by up to {check.max_logprob_diff}"


def test_decode_steps_take_the_fused_call_up_to_the_rows_where_it_measures_slower(
    tmp_path, monkeypatch
) -> None:
    """With a plan, the fused decode call (int8 matmuls in one parallel region) is timed
    against layer by layer (the plan's bf16) from the plan's first bf16 bucket up, and keeps
    every row count below the first it loses; the synthetic steps leave the cache empty."""
    threads = _plant_bf16_everywhere(tmp_path, monkeypatch)
    runner = make_llm(batch_invariant=False, num_threads=threads).engine.runner
    fused = runner.model.fused_decode
    if fused is None:
        pytest.skip("no fused decode kernel here")
    tried = list(fused.timings)
    assert tried == list(BUCKETS[: len(tried)])  # ascending from 1, stopping at a loss
    lost = [rows for rows, (f, layers) in fused.timings.items() if layers < f]
    assert lost == ([] if fused.max_rows is None else [fused.max_rows])
    if fused.max_rows is None:  # never lost: every row count up to a full batch was tried
        assert tried[-1] == max(b for b in BUCKETS if b <= SchedulerConfig().max_num_seqs)
    assert all(not cache.any() for cache in runner.kv_caches)
