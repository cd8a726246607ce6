"""Matrices read a block of rows at a time (chatfleet/model/weight_rows.py): the formats built
from blocks hold what they would hold built from the whole matrix, and a GGUF's Q/K rows,
interleaved per head in the file, come out in transformers' order block by block."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize

from chatfleet.model import kernels
from chatfleet.model.linear import BlockInt8Linear, DenseLinear
from chatfleet.model.loader import load_weights
from chatfleet.model.weight_rows import WeightRows
from chatfleet.modelfile.gguf_file import read_gguf
from chatfleet.modelfile.gguf_writer import K_QUANTS, random_k_quants, write_gguf
from tests.model.test_architectures import build, engine


def test_blocks_cover_the_stacked_parts_in_order_on_aligned_boundaries():
    a, b = torch.randn(10, 8), torch.randn(6, 8)
    mats = WeightRows.stack(
        WeightRows.of(a), WeightRows((6, 8), ((6, lambda i, j: b[i:j], None),), 3)
    )
    blocks = list(mats.blocks(4))
    assert [len(x) for x in blocks] == [3, 3, 3, 1, 3, 3]  # lcm(1, 3) = 3 rows at a time
    assert torch.equal(torch.cat(blocks), torch.cat([a, b]))
    assert torch.equal(mats.whole(torch.bfloat16), torch.cat([a, b]).bfloat16())
    with pytest.raises(ValueError, match="columns"):
        WeightRows.stack(WeightRows.of(a), WeightRows.of(torch.randn(2, 4)))


@pytest.mark.skipif(kernels.load("qlinear") is None, reason="int8 kernel needs AVX-512 VNNI")
def test_codes_from_the_file_are_tiled_block_by_block_as_from_the_whole():
    """Rows whose code width is known before they are read are tiled as they are read (no
    whole-matrix copy of their codes); what is held is what the whole matrix gives, 4-bit
    codes in 4 bits."""
    n, nb = 2 * 2048 + 48, 4  # several blocks of rows, the last one short
    codes = torch.randint(0, 16, (n, nb, 32), dtype=torch.uint8)
    scale, zero = torch.rand(n, nb), -torch.rand(n, nb)
    encode = lambda a, b: (codes[a:b], scale[a:b], zero[a:b])  # noqa: E731
    read = lambda a, b: (codes[a:b].float() * scale[a:b, :, None] + zero[a:b, :, None]).flatten(1)  # noqa: E731
    encoded = WeightRows((n, nb * 32), ((n, read, encode),), code_bits=4)
    stacked = WeightRows.stack(encoded, WeightRows((16, nb * 32), ((16, read, encode),), 1, 5))
    assert stacked.code_bits == 5  # the widest part's
    assert WeightRows.stack(encoded, WeightRows.of(torch.randn(16, nb * 32))).code_bits is None
    streamed = BlockInt8Linear(encoded)
    whole = BlockInt8Linear(dataclasses.replace(encoded, code_bits=None))  # codes all at once
    assert streamed.bits == whole.bits == 4
    for name in ("packed", "scales", "zeros"):
        assert torch.equal(getattr(streamed, name), getattr(whole, name))
    held = codes.float() * scale.half().float()[..., None] + zero.half().float()[..., None]
    assert torch.equal(streamed.dequantized_weight(), held.flatten(1))  # fp16 scales, zeros
    # Rows a file gives as fp32 but whose format is fitted to 8 bits: fitted per block.
    w = torch.randn(n, nb * 32)
    fitted = WeightRows((n, nb * 32), ((n, lambda a, b: w[a:b], None),), code_bits=8)
    streamed, whole = BlockInt8Linear(fitted), BlockInt8Linear(WeightRows.of(w))
    assert streamed.bits == whole.bits == 8
    for name in ("packed", "scales", "zeros"):
        assert torch.equal(getattr(streamed, name), getattr(whole, name))


@pytest.mark.skipif(kernels.load("qlinear") is None, reason="int8 kernel needs AVX-512 VNNI")
def test_int8_weights_built_from_blocks_are_those_built_from_the_whole():
    w = torch.randn(4096 + 48, 64)
    whole, blocked = BlockInt8Linear(w), BlockInt8Linear(WeightRows.of(w))
    for name in ("packed", "scales", "zeros"):
        assert torch.equal(getattr(whole, name), getattr(blocked, name))
    assert torch.equal(DenseLinear(WeightRows.of(w), torch.float32).weight, w)


def test_gguf_q_and_k_rows_read_a_head_at_a_time_are_transformers_rows(tmp_path):
    _, model = build(tmp_path, "llama")
    path = str(tmp_path / "llama.gguf")
    write_gguf(model, "llama", path, GGMLQuantizationType.F32)  # Q/K interleaved per head
    _, weights = load_weights(path)
    attn = model.model.layers[1].self_attn
    for name, want in (("q", attn.q_proj.weight), ("k", attn.k_proj.weight)):
        rows = weights.rows(f"layers.1.{name}")
        head_dim = model.config.hidden_size // model.config.num_attention_heads
        assert rows.align == head_dim
        blocks = list(rows.blocks(1))  # one head per block
        assert len(blocks) == want.shape[0] // head_dim
        assert torch.equal(torch.cat(blocks), want.detach())


@pytest.mark.skipif(kernels.load("qlinear") is None, reason="int8 kernel needs AVX-512 VNNI")
@pytest.mark.parametrize(
    ("qtype", "bits"),
    [
        (GGMLQuantizationType.Q8_0, 8),
        (GGMLQuantizationType.Q4_0, 4),
        (GGMLQuantizationType.Q4_1, 4),
        (GGMLQuantizationType.Q4_K, 4),
        (GGMLQuantizationType.Q5_K, 5),
        (GGMLQuantizationType.Q6_K, 6),
    ],
    ids=lambda v: getattr(v, "name", str(v)),
)
def test_gguf_blocks_are_held_as_their_own_codes(tmp_path, qtype, bits):
    """The int8 format holds a block format's codes as they are: 4-, 5- and 6-bit files in 4,
    5 and 6 bits (Q6_K with its 16-value scales), the values exactly (the K-quants' scales
    rounded once, to fp16)."""
    _, model = build(tmp_path, "qwen2", tie_word_embeddings=False)
    k_quant = qtype in K_QUANTS
    encoded = random_k_quants(model, qtype, np.random.default_rng(0)) if k_quant else None
    path = str(tmp_path / f"{qtype.name}.gguf")
    write_gguf(model, "qwen2", path, qtype, encoded=encoded)
    _, weights = load_weights(path)
    # The loader's fp32 reading of the file is gguf's own decoding, bit for bit.
    _, tensors = read_gguf(path)
    gguf_gate = next(t for t in tensors if t.name == "blk.0.ffn_gate.weight")
    assert torch.equal(
        weights["layers.0.gate"], torch.from_numpy(dequantize(gguf_gate.data, qtype))
    )
    held = engine(path, "int8").engine.runner.model
    for linear, parts in ((held.layers[0].gate_up, ("gate", "up")), (held.embed_table, None)):
        names = [f"layers.0.{p}" for p in parts] if parts else ["embed"]
        want = torch.cat([weights[n] for n in names])
        assert linear.bits == bits
        got = linear.dequantized_weight()
        tolerance = 2e-3 * want.abs().max().item() if k_quant else 0.0
        assert (got - want).abs().max().item() <= tolerance
        ids = torch.tensor([0, 17, len(want) - 1, 17])
        assert torch.equal(linear.rows(ids), got[ids])


@pytest.mark.skipif(kernels.load("qlinear") is None, reason="int8 kernel needs AVX-512 VNNI")
def test_a_matrix_stacked_from_several_code_widths_is_held_in_the_widest():
    """As in a Q4_K_M file, where V (Q6_K) is stacked with Q and K (Q4_K): 4-bit parts are held
    in the 6-bit layout, their block's scale for both halves, every value as it was; beside
    rows only fitting gives (8 bits), Q6_K's half-block codes are fitted too."""
    from tests.model.test_linear import coded_weight

    four, six = coded_weight(32, 64, 4), coded_weight(48, 64, 6, halves=2)
    stacked = BlockInt8Linear(WeightRows.stack(four, six))
    assert stacked.bits == 6
    want = torch.cat([four.whole(), six.whole()])
    assert torch.equal(stacked.dequantized_weight(), want)
    w = torch.randn(16, 64)
    fitted = WeightRows((16, 64), ((16, lambda a, b: w[a:b], None),), code_bits=8)
    wide = BlockInt8Linear(WeightRows.stack(six, fitted))
    assert wide.bits == 8
    want = torch.cat([six.whole(), w])
    assert (wide.dequantized_weight() - want).abs().max() <= 1e-2 * want.abs().max()
