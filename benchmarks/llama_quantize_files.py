"""Quantized files made by llama.cpp's own `llama-quantize`, served by chatfleet and checked
against transformers holding what the file decodes to.

The tests prove the K-quant readers on random super-blocks laid out as ggml-common.h defines
them (gguf has no K-quant quantizer, and building llama.cpp takes longer than the suite may).
This script checks the files people download: a tiny random-weight Llama (tied embedding) and
Qwen2 (q/k/v biases, untied) are written as F32 GGUF and quantized by `llama-quantize` (built
from the llama.cpp vendored in the `llama-cpp-python` sdist, by
`benchmarks/peers/build_llama_server.sh`) to Q8_0, Q4_0, Q4_K_M, Q5_K_M and Q6_K (the K types
mix Q4_K / Q5_K / Q6_K per tensor as llama.cpp chooses). Each file is served in the fp32
runtime, compared with transformers holding gguf's decoding of the file's bytes, and in the
int8 runtime, compared with transformers holding what that runtime holds (the file's codes, K
scales rounded to fp16) and, as what it costs, with the file's decoding. Figures:
greedy steps agreeing (of 32), the first that differs, the largest top-5 logprob difference.

    benchmarks/peers/build_llama_server.sh   # builds llama-quantize beside llama-server
    .venv/bin/python benchmarks/llama_quantize_files.py --out docs/results/llama_quantize_files/
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from typing import Any

import numpy as np
import torch
import transformers
from gguf import GGUFReader
from gguf.quants import dequantize
from offline_throughput import cpu_info

from chatfleet import LLM, SamplingParams
from chatfleet.config.engine_config import CacheConfig, SchedulerConfig
from chatfleet.model.export import held_hf_weights
from chatfleet.modelfile.gguf_writer import gguf_name, write_gguf

TYPES = ("Q8_0", "Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K")
SHAPE = {
    "vocab_size": 49152,  # the default model's tokenizer is copied into each file
    "hidden_size": 256,  # K-quant super-blocks are 256 values along each row
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "initializer_range": 0.3,  # peaked logits: greedy choices far from ties
    "max_position_embeddings": 512,
}
FAMILIES = {  # family: (config class, model class, tied embedding)
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, True),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, False),
}


def _quantize_tool() -> str:
    peers = os.environ.get("CHATFLEET_PEERS_DIR", os.path.expanduser("~/.cache/chatfleet-peers"))
    version = os.environ.get("LLAMA_CPP_PYTHON_VERSION", "0.3.36")
    tool = os.path.join(peers, f"llama.cpp-build-{version}", "bin", "llama-quantize")
    if not os.access(tool, os.X_OK):
        raise SystemExit(f"{tool} is missing: run benchmarks/peers/build_llama_server.sh first")
    return tool


def build_model(family: str) -> torch.nn.Module:
    config_cls, model_cls, tied = FAMILIES[family]
    torch.manual_seed(0)
    model = model_cls(config_cls(**SHAPE, tie_word_embeddings=tied)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias"):  # zero at init: they would prove nothing
                param.normal_(0.0, 1.0)
    return model


def hold_the_file(model: Any, family: str, path: str) -> dict[str, int]:
    """Sets each matrix of `model` to gguf's decoding of the file's tensor; returns how many
    tensors of each weight type the file holds."""
    reader = GGUFReader(path)
    by_name = {t.name: t for t in reader.tensors}
    c = model.config
    types: dict[str, int] = {}
    with torch.no_grad():
        for name, param in model.state_dict(keep_vars=True).items():
            tensor = by_name.get(gguf_name(name))
            if tensor is None:  # a tied head: the embedding's tensor
                tensor = by_name[gguf_name("model.embed_tokens.weight")]
            types[tensor.tensor_type.name] = types.get(tensor.tensor_type.name, 0) + 1
            value = dequantize(tensor.data, tensor.tensor_type).reshape(param.shape)
            heads = {".q_proj.": c.num_attention_heads, ".k_proj.": c.num_key_value_heads}
            for key, n in heads.items():
                if family == "llama" and key in name:  # undo llama.cpp's row interleave
                    value = value.reshape(n, -1, 2, *value.shape[1:]).swapaxes(1, 2)
                    value = value.reshape(param.shape)
            param.copy_(torch.from_numpy(np.ascontiguousarray(value)))
    return types


def serve(path: str, weight_format: str) -> LLM:
    return LLM(
        model=path,
        weight_format=weight_format,
        cache=CacheConfig(num_blocks_override=64, kv_cache_dtype="fp32"),
        scheduler=SchedulerConfig(max_num_seqs=4),
    )


def compare(llm: LLM, model: Any) -> dict[str, Any]:
    """32 greedy tokens against the reference's argmax (how many agree, the first that does
    not) and the largest difference of their top-5 logprobs."""
    prompt = [(37 * i + 11) % (int(SHAPE["vocab_size"]) - 1) + 1 for i in range(20)]
    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True, logprobs=5)
    out = llm.generate(prompt, params)[0].outputs[0]
    with torch.inference_mode():
        ids = torch.tensor([prompt + out.token_ids[:-1]])
        ref = model(ids).logits[0, len(prompt) - 1 :].float().log_softmax(-1)
    # The reference runs on the engine's own tokens, so every step compares like with like.
    agree, first, worst = 0, None, 0.0
    assert out.logprobs is not None
    for step, (token, lp) in enumerate(zip(out.token_ids, out.logprobs, strict=True)):
        if token == int(ref[step].argmax()):
            agree += 1
        elif first is None:
            first = step
        worst = max([worst] + [abs(v - float(ref[step, t])) for t, v in lp.top])
    return {
        "greedy_steps_agreeing": agree,
        "first_difference": first,
        "steps": len(out.token_ids),
        "max_logprob_diff": worst,
    }


def check(family: str, path: str) -> list[dict[str, Any]]:
    """fp32 runtime against the file's decoding; int8 runtime against what it holds (Q6_K is
    fitted again to 8-bit codes) and, as what the int8 runtime costs, against the file's."""
    model = build_model(family)
    types = hold_the_file(model, family, path)
    row = {"family": family, "file": os.path.basename(path), "tensor_types": types}
    rows = [row | {"runtime": "fp32", "reference": "file"} | compare(serve(path, "fp32"), model)]
    int8 = serve(path, "int8")
    rows.append(row | {"runtime": "int8", "reference": "file"} | compare(int8, model))
    held = held_hf_weights(int8.engine.runner.model)
    model.load_state_dict(held, strict=False)
    rows.append(row | {"runtime": "int8", "reference": "held"} | compare(int8, model))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="results/llama_quantize_files/")
    args = p.parse_args()
    tool = _quantize_tool()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in FAMILIES:
            source = os.path.join(tmp, f"{family}-F32.gguf")
            write_gguf(build_model(family), family, source)
            for qtype in TYPES:
                path = os.path.join(tmp, f"{family}-{qtype}.gguf")
                subprocess.run([tool, source, path, qtype, "2"], check=True, capture_output=True)
                rows += check(family, path)
                for row in rows[-3:]:
                    print(json.dumps(row), flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "llama_quantize_files.json"), "w") as f:
        json.dump({"cpu": cpu_info(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
