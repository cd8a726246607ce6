"""Offline throughput of chatfleet vs HF transformers on the same GGUF weights, on this CPU.

Measures, and writes to one JSON file:
  machine      CPU model, matmul ISA flags, torch CPU capability, threads, memory read GB/s
  chatfleet    output / total tok/s per concurrency C (C*waves ShareGPT prompts, fixed output
               length, ignore_eos), TTFT / TPOT, pure single-stream decode ms/token
  formats      fp32 vs int8 at the smallest and largest C, and which wins
  bound        single-stream decode floor = bytes read per token / bandwidth, measured / floor
  kernels      torch build lines (MKL / oneDNN), oneDNN+MKL verbose kernel names for one
               matmul per format, top ops of one profiled decode step
  hf           transformers generate, one request at a time and as left-padded static batches

Full run (takes a while on 2 cores; nothing else should be running):
    .venv/bin/python benchmarks/offline_throughput.py
Smoke run:
    .venv/bin/python benchmarks/offline_throughput.py --num-prompts 4 --concurrency 1,2 \
        --max-tokens 8 --decode-tokens 16 --decode-repeats 1 --hf-batches 2 --max-prompt-len 256 \
        --bandwidth-gib 0.25 --output /tmp/offline_throughput.json
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from chatfleet import LLM, SamplingParams
from chatfleet.bench.datasets import load_sharegpt
from chatfleet.config.engine_config import CacheConfig, SchedulerConfig
from chatfleet.model.linear import resolve_weight_format
from chatfleet.modelfile.paths import default_model_path
from chatfleet.modelfile.tokenizer import Tokenizer

MATMUL_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)
SHORT_PROMPT = "Write a long story about a lighthouse keeper."
_request_ids = itertools.count()


# ---- machine ---------------------------------------------------------------------------------
def cpu_info() -> dict[str, Any]:
    model, flags = "unknown", set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {
        "model_name": model,
        "matmul_flags": {f: f in flags for f in MATMUL_FLAGS},
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "num_cpus": len(os.sched_getaffinity(0)),
        "torch_num_threads": torch.get_num_threads(),
    }


def measure_bandwidth_gb_s(gib: float, repeats: int = 5) -> float:
    """Best-of sum over a large fp32 tensor: read bandwidth with torch's own threads."""
    x = torch.ones(int(gib * 2**30) // 4)  # [n] fp32, written once so pages are resident
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        x.sum().item()
        best = min(best, time.perf_counter() - start)
    return x.numel() * 4 / best / 1e9


def torch_build_kernels() -> dict[str, Any]:
    shown = torch.__config__.show()
    keep = ("Math Kernel Library", "MKL-DNN", "oneDNN", "CPU capability", "LAPACK", "OpenMP")
    lines = [
        ln.strip(" -")
        for ln in shown.splitlines()
        if any(k in ln for k in keep) and "Build settings" not in ln
    ]
    settings = [
        kv.strip()
        for kv in shown.split(",")
        if kv.strip().split("=")[0] in ("BLAS_INFO", "USE_MKL", "USE_MKLDNN")
    ]
    return {
        "config_lines": lines + settings,
        "mkl": torch.backends.mkl.is_available(),
        "mkldnn": torch.backends.mkldnn.is_available(),
    }


# One matmul per format at decode (1 row) and batch (64 rows) shapes: SmolLM2's up projection.
_VERBOSE_SNIPPET = """
import torch
from chatfleet.model.linear import make_linear
for fmt in ("fp32", "int8"):
    lin = make_linear(torch.randn(1536, 576), fmt)
    for rows in (1, 64):
        print(f"### {fmt} rows={rows}", flush=True)
        lin(torch.randn(rows, 576))
"""


def _verbose_kernel_name(line: str) -> tuple[bool, str] | None:
    """(is_info, name) for a oneDNN / MKL verbose line worth keeping, else None.

    oneDNN: onednn_verbose,v1,primitive,exec,cpu,<primitive>,<impl>,<prop>,<tensors>,..,<shape>,ms
    MKL:    MKL_VERBOSE SGEMM(T,N,m,n,k,<pointers...>) <time> ... (first line: library + ISA)
    """
    fields = line.split(",")
    if line.startswith(("onednn_verbose", "dnnl_verbose")):
        if "exec" in fields:
            i = fields.index("exec")
            impl = fields[i + 3] or "-"
            return False, f"oneDNN {fields[i + 2]} impl={impl} {fields[i + 5]} {fields[-2]}"
        isa = [f for f in fields if f.startswith("isa:")]
        return (True, f"oneDNN {isa[0]}") if isa else None
    if line.startswith("MKL_VERBOSE"):
        if "oneMKL" in line:  # the banner: version and the ISA MKL dispatches to
            return True, line.split(", Lnx")[0].removeprefix("MKL_VERBOSE ")
        return False, ",".join(fields[:5]).removeprefix("MKL_VERBOSE ") + ")"
    return None


def verbose_matmul_kernels() -> dict[str, list[str]]:
    """What MKL / oneDNN report running for one matmul per weight format and batch size.

    NOTE: the verbose switches are read when the libraries initialise, hence a subprocess.
    """
    env = dict(os.environ, MKL_VERBOSE="1", ONEDNN_VERBOSE="1", DNNL_VERBOSE="1")
    proc = subprocess.run(
        [sys.executable, "-c", _VERBOSE_SNIPPET], env=env, text=True, capture_output=True
    )
    found: dict[str, list[str]] = {}
    section = "?"
    for line in proc.stdout.splitlines():
        if line.startswith("### "):
            section = line[4:]
            continue
        parsed = _verbose_kernel_name(line)
        if parsed is not None:
            names = found.setdefault("library" if parsed[0] else section, [])
            if parsed[1] not in names:
                names.append(parsed[1])
    return found


# ---- prompts ---------------------------------------------------------------------------------
def chat_prompt_ids(tokenizer: Tokenizer, text: str, max_len: int) -> list[int]:
    """Chat-templated prompt of at most max_len tokens; the user text is cut, not the template."""
    ids = tokenizer.apply_chat_template([{"role": "user", "content": text}])
    if len(ids) <= max_len:
        return ids
    content = tokenizer.encode(text)
    keep = max_len - (len(ids) - len(content)) - 8  # margin: re-encoding may shift a token
    cut = tokenizer.decode(content[: max(keep, 1)])
    ids = tokenizer.apply_chat_template([{"role": "user", "content": cut}])
    return ids if len(ids) <= max_len else ids[:max_len]


# ---- chatfleet ---------------------------------------------------------------------------------
@dataclass
class RunResult:
    system: str
    weight_format: str
    concurrency: int
    num_requests: int
    num_prompt_tokens: int
    num_output_tokens: int
    elapsed_s: float
    output_tok_s: float
    total_tok_s: float
    mean_ttft_ms: float | None = None
    mean_tpot_ms: float | None = None


def make_llm(
    fmt: str, concurrency: int, max_seq_len: int, batched_tokens: int, num_threads: int
) -> LLM:
    block_size = CacheConfig().block_size
    # Enough KV blocks that the measured C never preempts (plus a warm-up request).
    num_blocks = (concurrency + 1) * -(-max_seq_len // block_size) + 16
    return LLM(
        model=None,
        weight_format=fmt,
        num_threads=num_threads,
        cache=CacheConfig(num_blocks_override=num_blocks),
        scheduler=SchedulerConfig(max_num_seqs=concurrency, max_num_batched_tokens=batched_tokens),
    )


def drive(llm: LLM, prompts: list[list[int]], max_tokens: int) -> tuple[float, list[dict]]:
    """Queue all prompts at once, step to completion; per request: first-token and end times."""
    engine = llm.engine
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    start = time.perf_counter()
    records: dict[str, dict] = {}
    for prompt in prompts:
        request_id = f"bench-{next(_request_ids)}"
        engine.add_request(request_id, prompt, params)
        records[request_id] = {"prompt_len": len(prompt)}
    while engine.has_unfinished_requests():
        outputs = engine.step()
        now = time.perf_counter()
        for out in outputs:
            rec = records[out.request_id]
            if "first_s" not in rec and out.outputs[0].token_ids:
                rec["first_s"] = now - start
            if out.finished:
                rec["end_s"], rec["num_output"] = now - start, len(out.outputs[0].token_ids)
    return time.perf_counter() - start, list(records.values())


def run_chatfleet(
    llm: LLM, fmt: str, concurrency: int, prompts: list[list[int]], max_tokens: int
) -> RunResult:
    elapsed, recs = drive(llm, prompts, max_tokens)
    num_in = sum(r["prompt_len"] for r in recs)
    num_out = sum(r["num_output"] for r in recs)
    tpots = [
        (r["end_s"] - r["first_s"]) / (r["num_output"] - 1) for r in recs if r["num_output"] > 1
    ]
    return RunResult(
        "chatfleet",
        fmt,
        concurrency,
        len(recs),
        num_in,
        num_out,
        elapsed,
        num_out / elapsed,
        (num_in + num_out) / elapsed,
        1e3 * statistics.mean(r["first_s"] for r in recs),
        1e3 * statistics.mean(tpots) if tpots else None,
    )


def single_stream_decode_ms(llm: LLM, prompt: list[int], num_tokens: int, repeats: int) -> float:
    """Median ms per output token after the first, one request alone in the engine."""
    samples = []
    for _ in range(repeats):
        _, (rec,) = drive(llm, [prompt], num_tokens)
        samples.append(1e3 * (rec["end_s"] - rec["first_s"]) / (rec["num_output"] - 1))
    return statistics.median(samples)


def bytes_read_per_token(llm: LLM) -> int:
    """Weight bytes one decode token streams: every matmul weight (+ scales) and norm. RoPE
    tables and an untied embedding are indexed, not streamed, so they do not count (a tied one
    is the head's weight)."""
    model = llm.engine.runner.model
    total = 0
    tensors = itertools.chain(model.named_parameters(), model.named_buffers())
    for name, t in tensors:
        untied_embedding = (
            name.startswith("embed_table.") and model.embed_table is not model.lm_head
        )
        if name in ("rope_cos", "rope_sin") or untied_embedding:
            continue
        total += t.nbytes
    return total


def kv_bytes_per_context_token(llm: LLM) -> int:
    caches = llm.engine.runner.kv_caches  # per layer [2, blocks, block, kv_heads, head_dim]
    return sum(c[:, 0, 0].nbytes for c in caches)


def profile_decode_step(llm: LLM, prompt: list[int], batch: int, top: int) -> list[str]:
    """Names of the top ops (self CPU time) of one engine step where every request decodes."""
    from torch.profiler import ProfilerActivity, profile

    engine = llm.engine
    params = SamplingParams(temperature=0, max_tokens=64, ignore_eos=True)
    request_ids = [f"prof-{next(_request_ids)}" for _ in range(batch)]
    for request_id in request_ids:
        engine.add_request(request_id, prompt, params)
    pending = set(request_ids)
    while pending:  # prefill until each request has its first token
        pending -= {o.request_id for o in engine.step() if o.outputs[0].token_ids}
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        engine.step()
    for request_id in request_ids:
        engine.abort_request(request_id)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    return [e.key for e in events[:top]]


def bench_format(
    fmt: str,
    concurrencies: list[int],
    prompts: list[list[int]],
    short: list[int],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """All concurrencies for one weight format; decode, bytes and profiles on the extremes."""
    max_seq_len = args.max_prompt_len + max(args.max_tokens, args.decode_tokens)
    runs: list[RunResult] = []
    extra: dict[str, Any] = {}
    for concurrency in concurrencies:
        llm = make_llm(fmt, concurrency, max_seq_len, args.max_num_batched_tokens, args.num_threads)
        drive(llm, [short], 2)  # warm-up: first calls into oneDNN / MKL pick their kernels
        runs.append(
            run_chatfleet(
                llm, fmt, concurrency, prompts_for(prompts, concurrency, args), args.max_tokens
            )
        )
        if concurrency == concurrencies[0]:
            extra["single_stream_decode_ms"] = single_stream_decode_ms(
                llm, short, args.decode_tokens, args.decode_repeats
            )
            extra["weight_bytes_per_token"] = bytes_read_per_token(llm)
            extra["kv_bytes_per_context_token"] = kv_bytes_per_context_token(llm)
            extra["num_threads"] = args.num_threads
            extra["profile_decode_batch_1"] = profile_decode_step(llm, short, 1, args.profile_top)
        if concurrency == concurrencies[-1] and concurrency > 1:
            extra[f"profile_decode_batch_{concurrency}"] = profile_decode_step(
                llm, short, concurrency, args.profile_top
            )
        del llm
        gc.collect()
    return {"runs": runs, **extra}


def decode_bound(result: dict[str, Any], prompt_len: int, gb_s: float, decode_tokens: int) -> dict:
    """Single-stream floor: every weight byte (and the KV so far) read once per token."""
    context = prompt_len + decode_tokens / 2  # mean context over the measured tokens
    weights = result["weight_bytes_per_token"]
    total = weights + result["kv_bytes_per_context_token"] * context
    bound_ms = 1e3 * total / (gb_s * 1e9)
    return {
        "bytes_per_token": int(total),
        "weight_bytes_per_token": weights,
        "bound_ms": bound_ms,
        "weights_only_bound_ms": 1e3 * weights / (gb_s * 1e9),
        "measured_ms": result["single_stream_decode_ms"],
        "measured_over_bound": result["single_stream_decode_ms"] / bound_ms,
    }


# ---- HF transformers baseline ------------------------------------------------------------------
@torch.inference_mode()
def hf_generate(model: Any, batch: list[list[int]], max_tokens: int, pad_id: int) -> float:
    """Seconds for one left-padded static batch, greedy, exactly max_tokens new tokens."""
    width = max(len(p) for p in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # [B, width]
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(batch):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    start = time.perf_counter()
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=max_tokens,
        min_new_tokens=max_tokens,
        do_sample=False,
        pad_token_id=pad_id,
    )
    elapsed = time.perf_counter() - start
    assert out.shape == (len(batch), width + max_tokens), out.shape
    return elapsed


def bench_hf(
    prompts: list[list[int]], short: list[int], pad_id: int, args: argparse.Namespace
) -> dict[str, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are local; never reach a hub
    import transformers
    from transformers import AutoModelForCausalLM

    folder, name = os.path.split(default_model_path())
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.eval()
    load_s = time.perf_counter() - start
    hf_generate(model, [short], 2, pad_id)  # warm-up
    runs = []
    for batch_size in [1, *args.hf_batches]:
        batch_prompts = prompts_for(prompts, batch_size, args)
        elapsed = sum(
            hf_generate(model, batch_prompts[i : i + batch_size], args.max_tokens, pad_id)
            for i in range(0, len(batch_prompts), batch_size)
        )
        num_in, num_out = sum(map(len, batch_prompts)), len(batch_prompts) * args.max_tokens
        runs.append(
            RunResult(
                "hf",
                "fp32",
                batch_size,
                len(batch_prompts),
                num_in,
                num_out,
                elapsed,
                num_out / elapsed,
                (num_in + num_out) / elapsed,
            )
        )
    # Decode-only ms/token: (time for N tokens - time for 1 token) / (N - 1), median of repeats.
    samples = []
    for _ in range(args.decode_repeats):
        full = hf_generate(model, [short], args.decode_tokens, pad_id)
        first = hf_generate(model, [short], 1, pad_id)
        samples.append(1e3 * (full - first) / (args.decode_tokens - 1))
    return {
        "transformers_version": transformers.__version__,
        "load_s": load_s,
        "weights": "GGUF dequantized to fp32",
        "batching": "static, left-padded",
        "runs": runs,
        "single_stream_decode_ms": statistics.median(samples),
    }


# ---- driver ------------------------------------------------------------------------------------
def prompts_for(prompts: list[list[int]], concurrency: int, args: argparse.Namespace) -> list:
    return prompts[: args.num_prompts or args.waves * concurrency]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--num-prompts",
        type=int,
        default=0,
        help="prompts per concurrency level / HF batch size (default: waves x C)",
    )
    p.add_argument("--waves", type=int, default=2, help="prompts = waves x C when not given")
    p.add_argument("--concurrency", type=ints, default=[1, 16, 64])
    p.add_argument("--max-tokens", type=int, default=128, help="fixed output length (ignore_eos)")
    p.add_argument("--max-prompt-len", type=int, default=1024)
    p.add_argument("--max-num-batched-tokens", type=int, default=512)
    p.add_argument("--weight-format", default="auto", help="format swept over all concurrencies")
    p.add_argument(
        "--compare-formats",
        default="fp32,int8",
        help="formats also run at the smallest and largest concurrency",
    )
    p.add_argument("--decode-tokens", type=int, default=128)
    p.add_argument("--decode-repeats", type=int, default=3)
    p.add_argument("--hf-batches", type=ints, default=[8, 32])
    p.add_argument("--skip-hf", action="store_true")
    p.add_argument("--bandwidth-gib", type=float, default=1.0)
    p.add_argument("--profile-top", type=int, default=12)
    p.add_argument("--num-threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="results/offline_throughput.json")
    return p.parse_args(argv)


def versions() -> dict[str, str]:
    import numpy

    rev = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent,
    ).stdout.strip()
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "chatfleet_git": rev or "unknown",
    }


def format_winners(formats: dict[str, dict], concurrencies: list[int]) -> dict[str, str]:
    """Per compared concurrency the format with the most output tok/s; decode: fewest ms."""
    winners = {}
    for concurrency in concurrencies:
        rates = {
            fmt: run.output_tok_s
            for fmt, res in formats.items()
            for run in res["runs"]
            if run.concurrency == concurrency
        }
        winners[f"C={concurrency}"] = max(rates, key=lambda f: rates[f])
    decode = {fmt: res["single_stream_decode_ms"] for fmt, res in formats.items()}
    winners["single_stream_decode"] = min(decode, key=lambda f: decode[f])
    return winners


def print_table(report: dict[str, Any]) -> None:
    machine = report["machine"]
    flags = ",".join(f for f, on in machine["matmul_flags"].items() if on)
    print(
        f"\n{machine['model_name']} | {machine['torch_cpu_capability']} | {flags} | "
        f"{machine['memory_read_gb_s']:.1f} GB/s read"
    )
    runs = [r for res in report["chatfleet"]["formats"].values() for r in res["runs"]]
    runs += report.get("hf", {}).get("runs", [])
    print(
        f"{'system':<10}{'format':<7}{'C':>4}{'reqs':>6}{'out tok/s':>11}{'total tok/s':>13}"
        f"{'TTFT ms':>9}{'TPOT ms':>9}"
    )
    for r in runs:
        ttft = f"{r.mean_ttft_ms:9.0f}" if r.mean_ttft_ms is not None else f"{'-':>9}"
        tpot = f"{r.mean_tpot_ms:9.1f}" if r.mean_tpot_ms is not None else f"{'-':>9}"
        print(
            f"{r.system:<10}{r.weight_format:<7}{r.concurrency:>4}{r.num_requests:>6}"
            f"{r.output_tok_s:>11.1f}{r.total_tok_s:>13.1f}{ttft}{tpot}"
        )
    for fmt, res in report["chatfleet"]["formats"].items():
        b = res["decode_bound"]
        print(
            f"single-stream decode {fmt:<5} {b['measured_ms']:6.2f} ms/token; bandwidth bound "
            f"{b['bound_ms']:.2f} ms ({b['bytes_per_token'] / 1e6:.0f} MB/token), "
            f"x{b['measured_over_bound']:.2f}"
        )
    if "hf" in report:
        print(f"single-stream decode hf    {report['hf']['single_stream_decode_ms']:6.2f} ms/token")
    print("winners:", report["format_winners"])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.num_threads)  # the engine sets the same; HF and probes inherit it
    concurrencies = sorted(set(args.concurrency))
    report: dict[str, Any] = {"args": vars(args), "versions": versions(), "machine": cpu_info()}
    gb_s = measure_bandwidth_gb_s(args.bandwidth_gib)
    report["machine"]["memory_read_gb_s"] = gb_s
    report["kernels"] = {**torch_build_kernels(), "verbose": verbose_matmul_kernels()}

    tokenizer = Tokenizer.from_model_path(None)
    widest = max(concurrencies + ([] if args.skip_hf else args.hf_batches))
    conversations = load_sharegpt(args.num_prompts or args.waves * widest, args.seed)
    prompts = [
        chat_prompt_ids(tokenizer, c.turns[0].text, args.max_prompt_len) for c in conversations
    ]
    short = tokenizer.apply_chat_template([{"role": "user", "content": SHORT_PROMPT}])

    primary = resolve_weight_format(args.weight_format, torch.device("cpu"))
    extremes = sorted({concurrencies[0], concurrencies[-1]})
    formats = {primary: bench_format(primary, concurrencies, prompts, short, args)}
    for fmt in args.compare_formats.split(","):
        if fmt and fmt not in formats:
            formats[fmt] = bench_format(fmt, extremes, prompts, short, args)
    for result in formats.values():
        result["decode_bound"] = decode_bound(result, len(short), gb_s, args.decode_tokens)
    report["chatfleet"] = {"primary_format": primary, "formats": formats}
    report["format_winners"] = format_winners(formats, extremes)
    if not args.skip_hf:
        # The engine runs torch's own ops on one thread with its int8 kernels; HF gets them all.
        torch.set_num_threads(args.num_threads)
        report["hf"] = bench_hf(prompts, short, tokenizer.eos_token_ids[0], args)

    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=asdict) + "\n")
    print_table(report)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
