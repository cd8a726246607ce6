"""The int8 weight format (csrc/qlinear.cpp) against fp32 math on the same weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from chatfleet import SamplingParams
from chatfleet.model import kernels
from chatfleet.model.linear import BlockInt8Linear, DenseLinear
from chatfleet.model.matmul_plan import ALL_BUCKETS, bucket_index
from chatfleet.model.weight_rows import WeightRows, code_values
from tests.conftest import make_llm

pytestmark = pytest.mark.skipif(
    kernels.load("qlinear") is None,
    reason="int8 kernel needs AVX-512 VNNI and a compiler",
)


def q4_1_weight(n: int, k: int, seed: int = 0) -> torch.Tensor:
    """Values on a Q4_1 grid: per 32-block d * q + m, q in 0..15 (with both ends used)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (n, k // 32, 32), generator=g).float()
    q[..., 0], q[..., 1] = 0, 15
    d = (torch.rand(n, k // 32, 1, generator=g) * 0.01 + 1e-3).half().float()
    m = (-torch.rand(n, k // 32, 1, generator=g) * 0.05).half().float()
    return (q * d + m).reshape(n, k)


def q8_0_weight(n: int, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-127, 128, (n, k // 32, 32), generator=g).float()
    q[..., 0] = 127
    d = (torch.rand(n, k // 32, 1, generator=g) * 0.01 + 1e-3).half().float()
    return (q * d).reshape(n, k)


def coded_weight(n: int, k: int, bits: int, halves: int = 1) -> WeightRows:
    """Codes below 2**bits as a K-quant file gives them (the width known before the rows are
    read), with a scale and zero per block or per 16-value half (Q6_K)."""
    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 2**bits, (n, k // 32, 32), generator=g, dtype=torch.uint8)
    codes[..., 0], codes[..., 1], codes[..., 16] = 0, 2**bits - 1, 2**bits - 1
    scale = (torch.rand(n, k // 32, halves, generator=g) * 0.01 + 1e-3).half().float()
    zero = (-torch.rand(n, k // 32, halves, generator=g) * 0.05).half().float()
    scale, zero = (t if halves == 2 else t[..., 0] for t in (scale, zero))
    encode = lambda a, b: (codes[a:b], scale[a:b], zero[a:b])  # noqa: E731
    read = lambda a, b: code_values(encode(a, b))  # noqa: E731
    return WeightRows((n, k), ((n, read, encode),), code_bits=bits)


@pytest.mark.parametrize(("bits", "halves"), [(5, 1), (6, 2)])
def test_5_and_6_bit_codes_are_held_in_their_width_and_multiplied_as_fp32_would(bits, halves):
    """Bits 4 and 5 in planes beside the 4-bit nibbles (6 bits: a scale and zero per half
    block, as Q6_K's sub-blocks): bits/8 of the 8-bit bytes, the same values, the same
    products (every code value, both ends, in every vector)."""
    rows = coded_weight(64, 96, bits, halves)
    w = rows.whole()
    lin, ref = BlockInt8Linear(rows), DenseLinear(w, torch.float32)
    assert lin.bits == bits and lin.packed.numel() == 64 * 96 * bits // 8
    assert lin.scales.numel() == 64 * 3 * halves
    assert torch.equal(lin.dequantized_weight(), w)
    ids = torch.tensor([0, 15, 16, 63, 15])
    assert torch.equal(lin.rows(ids), w[ids])
    x = torch.randn(7, 96) * 3
    x[:, 20] *= 40  # an outlier in the second half of a block
    want = ref(x)
    torch.testing.assert_close(lin(x), want, rtol=1e-3, atol=2e-3 * want.abs().max().item())
    assert torch.equal(lin(x[3:4].clone())[0], lin(x)[3])


@pytest.mark.parametrize(("make", "bits"), [(q4_1_weight, 4), (q8_0_weight, 8)])
def test_gguf_blocks_are_stored_exactly(make, bits):
    w = make(64, 96)
    lin = BlockInt8Linear(w)
    assert lin.bits == bits
    assert torch.equal(lin.dequantized_weight(), w)


@pytest.mark.parametrize("rows", [1, 3, 4, 7, 64])
def test_matches_fp32_with_fused_prologues_and_residual(rows):
    torch.manual_seed(0)
    w = q4_1_weight(48, 64)
    lin, ref = BlockInt8Linear(w), DenseLinear(w, torch.float32)
    x = torch.randn(rows, 64) * 3
    x[:, 5] *= 40  # an outlier channel only coarsens its own block
    norm, residual = torch.rand(64) + 0.5, torch.randn(rows, 48)
    gate_up = torch.randn(rows, 128)
    cases = [
        (lin.fused(x), ref(x)),
        (lin.fused(x, norm=norm, eps=1e-5), ref(F.rms_norm(x, (64,), norm, 1e-5))),
        (lin.fused(gate_up, swiglu=True), ref(F.silu(gate_up[:, :64]) * gate_up[:, 64:])),
        (lin.fused(x, residual=residual), residual + ref(x)),
    ]
    for got, want in cases:
        torch.testing.assert_close(got, want, rtol=1e-3, atol=2e-3 * want.abs().max().item())


def test_rows_are_batch_invariant_bit_for_bit():
    torch.manual_seed(1)
    lin = BlockInt8Linear(q4_1_weight(96, 128))
    x = torch.randn(37, 128)
    batched = lin(x)
    for i in (0, 4, 36):
        assert torch.equal(lin(x[i : i + 1].clone())[0], batched[i])


@pytest.mark.parametrize("prologue", ["none", "norm", "swiglu"])
def test_threads_quantizing_their_share_of_the_rows_change_no_bit(prologue):
    """Two threads split the rows' prologue and quantization, then take the output tiles in
    chunks; every row comes out as one thread computes it alone (odd row and tile counts: the
    shares differ, and the last chunk is short)."""
    torch.manual_seed(2)
    lin = BlockInt8Linear(q4_1_weight(16 * 35, 128))
    x = torch.randn(37, 256 if prologue == "swiglu" else 128) * 3
    norm = torch.rand(128) + 0.5 if prologue == "norm" else None
    residual = torch.randn(37, 16 * 35)

    def run(rows: slice, threads: int) -> torch.Tensor:
        weight = (lin.packed, lin.scales, lin.zeros)
        args = (norm, 1e-5, prologue == "swiglu", residual[rows].clone())
        return lin.kernel.qlinear(x[rows].clone(), *weight, threads, *args)

    shared = run(slice(None), 2)
    alone = torch.cat([run(slice(i, i + 1), 1) for i in range(37)])
    assert torch.equal(shared, alone)


HAS_TILES = kernels.amx_tiles()
WIDTHS = {
    "q8_0": lambda: q8_0_weight(96, 128),
    "q4_1": lambda: q4_1_weight(96, 128),
    "5-bit": lambda: coded_weight(64, 96, 5),
    "6-bit, scaled per half": lambda: coded_weight(64, 96, 6, halves=2),
}


def tile_cases(lin: BlockInt8Linear, rows: int, threads: int, emulate: bool):
    """The int8 kernel with and without tiles, on each prologue, with a residual."""
    torch.manual_seed(rows)
    k = lin.in_features
    for prologue in ("none", "norm", "swiglu"):
        x = torch.randn(rows, 2 * k if prologue == "swiglu" else k) * 3
        x[:, 20] *= 40  # an outlier in the second half of a block
        norm = torch.rand(k) + 0.5 if prologue == "norm" else None
        args = (lin.packed, lin.scales, lin.zeros, threads, norm, 1e-5, prologue == "swiglu")
        residual = torch.randn(rows, lin.out_features)
        yield (
            lin.kernel.qlinear(x, *args, residual, ALL_BUCKETS, emulate),
            lin.kernel.qlinear(x, *args, residual),
        )


@pytest.mark.parametrize("width", list(WIDTHS))
def test_the_amx_tile_pass_gives_the_vnni_passes_bits(width):
    """The tile pass (csrc/qlinear.h) on the tiles' software copy (csrc/tiles.h): 16 rows a
    group, so row counts below, at and past a group, on one thread and two, every code width:
    the VNNI kernel's output bit for bit."""
    lin = BlockInt8Linear(WIDTHS[width]())
    for rows in (1, 5, 16, 17, 37):
        for threads in (1, 2):
            for tiles, vnni in tile_cases(lin, rows, threads, emulate=True):
                assert torch.equal(tiles, vnni), (rows, threads)


@pytest.mark.skipif(not HAS_TILES, reason="this CPU (or process) has no AMX tiles")
@pytest.mark.parametrize("width", list(WIDTHS))
def test_amx_tiles_give_the_vnni_passes_bits(width):
    """The hardware's tiles: the same bits as the VNNI kernel (and so as their software copy)."""
    lin = BlockInt8Linear(WIDTHS[width]())
    for rows in (1, 17, 64):
        for tiles, vnni in tile_cases(lin, rows, 2, emulate=False):
            assert torch.equal(tiles, vnni), rows


@pytest.mark.skipif(HAS_TILES, reason="this CPU has AMX tiles")
def test_asking_for_amx_tiles_without_them_is_an_error_not_a_crash():
    """Without AMX (or Linux's grant of it), the first tile instruction would kill the process:
    the kernel refuses before it runs one."""
    lin = BlockInt8Linear(q8_0_weight(32, 64))
    # Which bit of the mask a row count reads is the plan's bucket (matmul_plan.bucket_index).
    for rows in (1, 3, 20, 600):
        x = torch.randn(rows, 64)
        with pytest.raises(RuntimeError, match="cannot use AMX tiles"):
            lin.int8(x, tile_mask=1 << bucket_index(rows))
        assert torch.equal(lin.int8(x, tile_mask=ALL_BUCKETS ^ (1 << bucket_index(rows))), lin(x))


@pytest.mark.parametrize(("make", "bits"), [(q4_1_weight, 4), (q8_0_weight, 8)])
def test_looked_up_rows_are_the_held_weights_rows(make, bits):
    lin = BlockInt8Linear(make(64, 96))
    assert lin.bits == bits
    ids = torch.tensor([0, 15, 16, 63, 15])
    assert torch.equal(lin.rows(ids), lin.dequantized_weight()[ids])
    with pytest.raises(IndexError, match="row 64 of a 64-row weight"):
        lin.rows(torch.tensor([3, 64]))


def test_a_tied_embedding_is_held_once_in_the_weight_format(llm):
    """The default model ties its embedding to its head: the lookups read the head's int8
    weights, and no fp32 vocabulary-by-hidden matrix is held beside them."""
    model = llm.engine.runner.model
    assert model.embed_table is model.lm_head
    c = model.config
    assert not [
        name
        for name, t in model.state_dict().items()
        if t.dtype == torch.float32 and t.numel() >= c.vocab_size * c.hidden_size
    ]
    ids = torch.tensor([1, 2, 3])
    assert torch.equal(model.embed(ids), model.lm_head.dequantized_weight()[ids])


def test_int8_model_agrees_with_fp32_model(llm):
    fp32 = make_llm(weight_format="fp32")
    assert llm.engine.runner.info.weight_format == "int8"
    prompts = ["What is the capital of France?", "Name three primary colors."]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, logprobs=1)
    for a, b in zip(llm.generate(prompts, params), fp32.generate(prompts, params), strict=True):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
