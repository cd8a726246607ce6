"""Each supported family against `transformers` on a tiny random-weight model built from a
config (no downloads): Llama 3.1 with llama3 rope scaling and Qwen2.5 with YaRN past their
original context, Qwen2 with q/k/v biases (tied and untied), Mistral, as HF directories and as
GGUF files (F32 and quantized); and the files chatfleet must refuse, by name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from safetensors.torch import load_file, save_file

from chatfleet import LLM, SamplingParams
from chatfleet.config.engine_config import CacheConfig, SchedulerConfig
from chatfleet.model import kernels
from chatfleet.model.architectures import UnsupportedModelError
from chatfleet.model.export import held_hf_weights
from chatfleet.model.gguf_weights import config_from_gguf
from chatfleet.model.loader import load_weights
from chatfleet.modelfile.gguf_file import read_gguf
from chatfleet.modelfile.gguf_writer import (
    K_QUANTS,
    gguf_name,
    quantized,
    random_k_quants,
    write_gguf,
)
from chatfleet.modelfile.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

VOCAB = 49152  # the default model's tokenizer is saved with each tiny model
SHAPE = {
    "vocab_size": VOCAB,
    "hidden_size": 256,  # head_dim 64: the cpu attention kernel's shape
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "initializer_range": 0.3,  # peaked logits: greedy choices far from ties
    "max_position_embeddings": 512,
}
LLAMA31_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
    "rope_theta": 500000.0,
}
QWEN25_YARN = {  # Qwen2.5's long-context setting, with the original context cut to 64
    "rope_type": "yarn",
    "factor": 4.0,
    "original_max_position_embeddings": 64,
    "rope_theta": 1000000.0,
}
LINEAR_ROPE = {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}
# Engine (fp32 weights) and transformers differ only in the order of float32 operations.
LOGPROB_ATOL = 1e-3


def build(tmp_path: Path, family: str, **overrides) -> tuple[str, torch.nn.Module]:
    """A random-weight model of `family` saved as a HF directory (with the default model's
    tokenizer), and the transformers model it was saved from."""
    config_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    }[family]
    torch.manual_seed(0)
    model = model_cls(config_cls(**(SHAPE | overrides))).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias"):  # initialized to zero: they would prove nothing
                param.normal_(0.0, 1.0)
    path = tmp_path / family
    model.save_pretrained(path)
    Tokenizer.from_model_path(None).save_hf(str(path))
    return str(path), model


def engine(path: str, weight_format: str = "fp32") -> LLM:
    return LLM(
        model=path,
        weight_format=weight_format,
        cache=CacheConfig(num_blocks_override=64, kv_cache_dtype="fp32"),
        scheduler=SchedulerConfig(max_num_seqs=4),
    )


def assert_matches_transformers(
    path: str,
    model: torch.nn.Module,
    prompt: list[int],
    attention: str = "cpu",
    weight_format: str = "fp32",
    atol: float = LOGPROB_ATOL,
) -> None:
    """32 greedy tokens are transformers' argmax, with the same top-5 logprobs."""
    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True, logprobs=5)
    llm = engine(path, weight_format)
    assert llm.engine.runner.attention == attention
    out = llm.generate(prompt, params)[0].outputs[0]
    with torch.inference_mode():
        ids = torch.tensor([prompt + out.token_ids[:-1]])
        ref = model(ids).logits[0, len(prompt) - 1 :].float().log_softmax(-1)
    worst = 0.0
    for step, (token, lp) in enumerate(zip(out.token_ids, out.logprobs, strict=True)):
        assert token == int(ref[step].argmax()), f"token {step} differs"
        for alt_id, alt_lp in lp.top:
            worst = max(worst, abs(alt_lp - float(ref[step, alt_id])))
    assert worst < atol, f"logprobs differ by up to {worst}"


def prompt_ids(n: int) -> list[int]:
    return [(37 * i + 11) % (VOCAB - 1) + 1 for i in range(n)]


def test_llama31_rope_scaling_matches_transformers_past_its_original_context(tmp_path):
    path, model = build(tmp_path, "llama", rope_parameters=LLAMA31_ROPE)
    config, _ = load_weights(path)
    assert config.rope_scaling is not None and config.rope_scaling.kind == "llama3"
    # 150 prompt tokens + 32 generated: positions run well past the original 64.
    assert_matches_transformers(path, model, prompt_ids(150))


def test_yarn_rope_scaling_matches_transformers_past_its_original_context(tmp_path):
    path, model = build(tmp_path, "qwen2", rope_parameters=QWEN25_YARN)
    config, _ = load_weights(path)
    scaling = config.rope_scaling
    assert scaling is not None and scaling.kind == "yarn" and scaling.attention_factor > 1.1
    assert_matches_transformers(path, model, prompt_ids(150))


@pytest.mark.parametrize("tied", [True, False])
def test_qwen2_with_qkv_biases_matches_transformers(tmp_path, caplog, tied):
    path, model = build(tmp_path, "qwen2", tie_word_embeddings=tied)
    tensors = load_file(f"{path}/model.safetensors")
    assert any(".q_proj.bias" in name for name in tensors)
    with caplog.at_level("INFO", logger="chatfleet.engine"):
        assert_matches_transformers(path, model, prompt_ids(20))
    # What was loaded is said at start: family, size, stored types, context.
    (loaded,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("loaded")]
    assert f"loaded {path}: qwen2, " in loaded and f"tensors {len(tensors)} F32;" in loaded
    assert "context 512 tokens" in loaded


def test_mistral_matches_transformers_and_serves_within_its_window(tmp_path):
    """Also a head shape the cpu kernel lacks (head_dim 32): served through sdpa instead."""
    path, model = build(tmp_path, "mistral", sliding_window=96, hidden_size=128)
    assert_matches_transformers(path, model, prompt_ids(40), attention="sdpa")
    # Past the window, full attention would be wrong: the context stops at the window.
    assert engine(path).engine.max_model_len == 96


def _edit(path: str, config: dict | None = None, drop: str | None = None, add: str | None = None):
    if config is not None:
        with open(f"{path}/config.json") as f:
            merged = json.load(f) | config
        with open(f"{path}/config.json", "w") as f:
            json.dump(merged, f)
    if drop or add:
        tensors = load_file(f"{path}/model.safetensors")
        if drop:
            del tensors[drop]
        if add:
            tensors[add] = torch.zeros(3)
        save_file(tensors, f"{path}/model.safetensors")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"config": {"architectures": ["GemmaForCausalLM"]}},
            "'GemmaForCausalLM' is not supported (supported: LlamaForCausalLM, "
            "MistralForCausalLM, Qwen2ForCausalLM)",
        ),
        (
            {"drop": "model.layers.1.self_attn.k_proj.bias"},
            "missing tensors ['layers.1.k_bias']",
        ),
        (
            {"add": "model.layers.0.self_attn.q_norm.weight"},
            "unexpected tensors ['?model.layers.0.self_attn.q_norm.weight']",
        ),
        (
            {"config": {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0}}},
            "rope scaling 'dynamic' is not supported (supported: linear, llama3, yarn)",
        ),
        ({"config": {"hidden_act": "gelu"}}, "hidden_act='gelu' is not supported"),
        # A config that disagrees with its tensors would run on the tensors' sizes.
        (
            {"config": {"intermediate_size": 272}},
            "tensor shapes layers.0.down (256, 256) (config: (256, 272))",
        ),
        ({"config": {"vocab_size": 49000}}, "tensor shapes embed (49152, 256)"),
    ],
)
def test_what_cannot_be_served_exactly_is_refused_by_name(tmp_path, change, message):
    path, _ = build(tmp_path, "qwen2")
    _edit(path, **change)
    with pytest.raises(UnsupportedModelError) as err:
        load_weights(path)
    assert message in str(err.value)


def _llama31_rope_factors(model: torch.nn.Module) -> np.ndarray:
    """llama.cpp's `rope_freqs`: each frequency's divisor, from transformers' own llama3 rope."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    c = model.config
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](c, "cpu")
    dim = c.hidden_size // c.num_attention_heads
    theta = c.rope_parameters["rope_theta"]
    plain = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    return (plain / scaled.double()).numpy()


def _as_loaded(model: torch.nn.Module, qtype) -> torch.nn.Module:
    """The transformers model with each matrix replaced by what `qtype` keeps of it."""
    with torch.no_grad():
        for _, param in model.named_parameters():
            if param.ndim == 2:
                kept = quantized(param.detach().numpy().astype(np.float32), qtype)
                param.copy_(torch.from_numpy(np.asarray(kept)).reshape(param.shape))
    return model


@pytest.mark.parametrize(
    ("family", "overrides", "qtype"),
    [
        ("llama", {"rope_parameters": LLAMA31_ROPE}, GGMLQuantizationType.F32),
        ("llama", {"rope_parameters": LLAMA31_ROPE}, GGMLQuantizationType.Q8_0),
        ("qwen2", {"tie_word_embeddings": False}, GGMLQuantizationType.F32),
        ("qwen2", {}, GGMLQuantizationType.Q4_0),
        ("qwen2", {"rope_parameters": QWEN25_YARN}, GGMLQuantizationType.F32),
        ("llama", {"rope_parameters": LINEAR_ROPE}, GGMLQuantizationType.F32),
        # Mistral Nemo's shape: heads narrower than hidden / heads (its GGUFs say llama).
        ("mistral", {"head_dim": 128, "sliding_window": None}, GGMLQuantizationType.F32),
    ],
    ids=[
        "llama31-f32",
        "llama31-q8_0",
        "qwen2-f32",
        "qwen2-q4_0",
        "qwen25-yarn",
        "linear-rope",
        "mistral-head-dim",
    ],
)
def test_gguf_files_match_transformers_on_the_weights_they_hold(tmp_path, family, overrides, qtype):
    """Written as llama.cpp writes them (Llama's interleaved Q/K rows and `rope_freqs`,
    Qwen2's biases); a quantized file matches transformers on its dequantized weights."""
    hf_path, model = build(tmp_path, family, **overrides)
    path = str(tmp_path / f"{family}.gguf")
    llama3 = overrides.get("rope_parameters") == LLAMA31_ROPE
    factors = _llama31_rope_factors(model) if llama3 else None
    write_gguf(model, "llama" if family == "mistral" else family, path, qtype, rope_factors=factors)
    scaled = "rope_parameters" in overrides
    prompt = prompt_ids(150 if scaled else 20)  # scaled rope: past the original 64
    assert_matches_transformers(path, _as_loaded(model, qtype), prompt)


@pytest.mark.parametrize(
    ("key", "value"),
    [("attention.value_length", 32), ("rope.dimension_count", 32)],
    ids=["value-width", "partial-rope"],
)
def test_gguf_head_widths_not_served_are_refused_by_name(tmp_path, key, value):
    _, model = build(tmp_path, "llama")
    path = str(tmp_path / "llama.gguf")
    write_gguf(model, "llama", path)
    meta, tensors = read_gguf(path)
    meta[f"llama.{key}"] = value
    with pytest.raises(UnsupportedModelError, match=f"llama.{key} 32 with heads 64 wide"):
        config_from_gguf(meta, {t.name for t in tensors})


def test_a_tied_head_is_written_once_and_held_once(tmp_path):
    """As llama.cpp's converter writes a tied model (SmolLM2, Llama 3.2 1B): no `output.weight`;
    the engine's head is then its embedding."""
    _, model = build(tmp_path, "llama", tie_word_embeddings=True)
    path = str(tmp_path / "tied.gguf")
    write_gguf(model, "llama", path, GGMLQuantizationType.Q8_0)
    _, tensors = read_gguf(path)
    assert "token_embd.weight" in {t.name for t in tensors}
    assert "output.weight" not in {t.name for t in tensors}
    held = engine(path).engine.runner.model
    assert held.lm_head is held.embed_table
    assert_matches_transformers(path, _as_loaded(model, GGMLQuantizationType.Q8_0), prompt_ids(20))


@pytest.mark.parametrize("qtype", list(K_QUANTS), ids=lambda q: q.name)
def test_k_quant_gguf_files_match_transformers_on_what_they_decode_to(tmp_path, qtype):
    """Q4_K, Q5_K and Q6_K (what most people download) against transformers holding gguf's
    decoding of the same bytes, in fp32; in the int8 runtime format, against transformers
    holding the weights that format holds (their own codes, scales rounded to fp16)."""
    _, model = build(tmp_path, "qwen2", tie_word_embeddings=False)
    encoded = random_k_quants(model, qtype, np.random.default_rng(0))
    path = str(tmp_path / f"qwen2-{qtype.name}.gguf")
    write_gguf(model, "qwen2", path, qtype, encoded=encoded)
    assert_matches_transformers(path, model, prompt_ids(20))
    if kernels.load("qlinear") is not None:
        held = held_hf_weights(engine(path, "int8").engine.runner.model)
        result = model.load_state_dict(held, strict=False)
        assert not result.unexpected_keys  # every matrix the engine holds is set, and only
        assert all(k.endswith(("norm.weight", ".bias")) for k in result.missing_keys)
        # The int8 kernel also rounds activations to 16 bits per 32 values; Q6_K's random
        # super-blocks give weights, and logits, several times larger than the others'.
        int8_atol = 2e-2
        assert_matches_transformers(path, model, prompt_ids(20), "cpu", "int8", int8_atol)


def test_a_gguf_weight_type_that_cannot_be_read_is_refused_by_name(tmp_path):
    _, model = build(tmp_path, "qwen2")
    path = str(tmp_path / "bad.gguf")
    write_gguf(model, "qwen2", path, GGMLQuantizationType.F32)
    with open(path, "rb") as f:
        data = bytearray(f.read())
    # The first tensor's type field: after its name, dimension count and dimensions.
    first = gguf_name(next(iter(model.state_dict()))).encode()
    at = data.index(first) + len(first)
    num_dims = int.from_bytes(data[at : at + 4], "little")
    at += 4 + 8 * num_dims
    data[at : at + 4] = (99).to_bytes(4, "little")  # no such type
    with open(path, "wb") as f:
        f.write(bytes(data))
    with pytest.raises(
        UnsupportedModelError, match=f"tensor {first.decode()}: unknown GGUF weight type 99"
    ):
        load_weights(path)
