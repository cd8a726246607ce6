"""Load time and peak load memory per model file format, on this machine.

A random-weight Llama of a mid-size shape is written once per format (a HF directory with
safetensors, GGUF F16 / Q8_0 / Q4_1 / Q4_0 with gguf's quantizers and Q4_K / Q5_K / Q6_K
of random super-blocks, laid out as llama.cpp writes them); each is loaded by a fresh process
building the engine (`LLM`) in the default runtime format, which reports its load time, its
peak resident memory above what the process held before the load (the file's pages it
touched included), what it holds after, and of that the model's own tensors (weights,
scales, RoPE tables).
`--baseline DIR` loads the same files with another chatfleet checkout too, in the same run.
Each checkout first loads one file unmeasured (its C++ kernels are built then, if needed).

    .venv/bin/python benchmarks/model_load.py --out docs/results/model_load/model_load.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
from typing import Any

from offline_throughput import cpu_info

FORMATS = ("hf", "F16", "Q8_0", "Q4_1", "Q4_0", "Q4_K", "Q5_K", "Q6_K")
# Runs in the fresh process: the peak above the process's own (torch and chatfleet imported).
_PROBE = """
import json, os, sys, time
from chatfleet import LLM
from chatfleet.config.engine_config import CacheConfig
# NOTE: /proc's high-water mark, not getrusage's ru_maxrss, which execve keeps from the parent.
def kib(field):
    return int(next(l for l in open("/proc/self/status") if l.startswith(field)).split()[1])
before = kib("VmHWM")
start = time.perf_counter()
llm = LLM(model=sys.argv[1], cache=CacheConfig(num_blocks_override=16))
seconds = time.perf_counter() - start
fmt = llm.engine.runner.info.weight_format
peak, after = (kib("VmHWM") - before) / 1024, (kib("VmRSS") - before) / 1024
model = llm.engine.runner.model
tensors = {t.data_ptr(): t.nbytes for t in [*model.parameters(), *model.buffers()]}
weights = sum(tensors.values()) / 2**20
row = {"load_s": seconds, "peak_mib": peak, "held_mib": after, "weights_mib": weights}
print(json.dumps(row | {"runtime": fmt}))
sys.stdout.flush()
os._exit(0)  # the measurement is taken; a baseline may not shut down cleanly
"""


def build_files(out_dir: str, shape: dict[str, int]) -> dict[str, str]:
    import numpy as np
    import torch
    import transformers
    from gguf import GGMLQuantizationType

    from chatfleet.modelfile.gguf_writer import K_QUANTS, random_k_quants, write_gguf
    from chatfleet.modelfile.tokenizer import Tokenizer

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=49152, tie_word_embeddings=True, **shape)  # type: ignore[arg-type]
    model = transformers.LlamaForCausalLM(config).eval()
    paths = {"hf": os.path.join(out_dir, "hf")}
    model.save_pretrained(paths["hf"])
    Tokenizer.from_model_path(None).save_hf(paths["hf"])
    for name in FORMATS[1:]:
        paths[name] = os.path.join(out_dir, f"model-{name}.gguf")
        qtype = GGMLQuantizationType[name]
        if qtype in K_QUANTS:  # random super-blocks: gguf has no K-quant quantizer
            k_model = copy.deepcopy(model)
            encoded = random_k_quants(k_model, qtype, np.random.default_rng(0))
            write_gguf(k_model, "llama", paths[name], qtype, encoded=encoded)
        else:
            write_gguf(model, "llama", paths[name], qtype)
    return paths


def file_bytes(path: str) -> int:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
    return os.path.getsize(path)


def probe(path: str, repo: str) -> dict[str, Any]:
    # NOTE: from the checkout's own directory: `-c` puts the working directory first on the path.
    env = {**os.environ, "PYTHONPATH": repo}
    run = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", _PROBE, path],
        capture_output=True,
        text=True,
        env=env,
        cwd=repo,
    )
    if run.returncode != 0:
        raise RuntimeError(f"loading {path} with {repo} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--intermediate", type=int, default=2816)
    p.add_argument("--baseline", help="another checkout to load the same files with")
    p.add_argument("--out", default="results/model_load.json")
    args = p.parse_args()
    shape = {
        "hidden_size": args.hidden,
        "num_hidden_layers": args.layers,
        "intermediate_size": args.intermediate,
        "num_attention_heads": args.hidden // 64,
        "num_key_value_heads": args.hidden // 256,
    }
    repos = {"chatfleet": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    if args.baseline:
        repos["baseline"] = os.path.abspath(args.baseline)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files = build_files(tmp, shape)
        # NOTE: one checkout after the other: torch's extension cache is shared by name, so
        # alternating checkouts would rebuild the kernels at every switch.
        for label, repo in repos.items():
            probe(files["Q4_0"], repo)  # warm-up: builds the checkout's kernels if needed
            for fmt, path in files.items():
                row: dict[str, Any] = {"format": fmt, "code": label}
                row["file_mib"] = file_bytes(path) / 2**20
                row |= probe(path, repo)
                row["peak_over_file"] = row["peak_mib"] / row["file_mib"]
                rows.append(row)
                print(
                    f"{fmt:5} {label:9} file {row['file_mib']:7.1f} MiB  load "
                    f"{row['load_s']:5.1f} s  peak {row['peak_mib']:7.1f} MiB "
                    f"({row['peak_over_file']:.2f}x the file), held {row['held_mib']:7.1f} MiB "
                    f"(model tensors {row['weights_mib']:6.1f} MiB) "
                    f"as {row['runtime']}",
                    flush=True,
                )
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"machine": cpu_info(), "shape": shape, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
