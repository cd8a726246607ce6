"""chatfleet's own engine on a GPU with a Llama shape, step by step, against the roofline
that `chatfleet plan` uses for that GPU (issue 9: the analytic step-time model).

Random weights of the named shape (nothing is downloaded; a 16 GB checkpoint cannot travel to
the device machine either) and a made-up word-level tokenizer of the shape's vocabulary are
written as a HF directory: config.json, tokenizer.json, and the weights produced on load.
`plan calibrate`'s grid (`chatfleet.plan.calibrate.run_grid`) then times whole
`LLMEngine.step()` calls, and every timed step is set beside
`RooflineStepModel(shape, accelerator).step_time_s` for the same step shape. The script also
fits the roofline's three assumptions (per-step overhead, bandwidth and compute efficiency)
to the measured steps, and the five-term linear step model (`--step-model` for
`chatfleet plan`).

    PYTHONPATH=. python3 benchmarks/gpu/roofline_check.py --shape llama-8b \\
        --accelerator h200 --output OUT_DIR

`--shape tiny --device cpu` runs the same code on a small made-up shape (a check of the script
itself, seconds on a CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from chatfleet.config.engine_config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from chatfleet.model import loader
from chatfleet.plan.calibrate import CalibrationGrid, run_grid
from chatfleet.plan.hardware import MODEL_SHAPES, ModelShape, get_accelerator
from chatfleet.plan.roofline import RooflineParams, RooflineStepModel
from chatfleet.plan.step_model import LinearStepModel, StepSample

TINY = dataclasses.replace(
    MODEL_SHAPES["llama-8b"],
    vocab_size=2048,
    hidden_size=256,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    intermediate_size=512,
    head_dim=0,  # recomputed from the hidden size
)


def hf_config(c: ModelConfig) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads,
        "intermediate_size": c.intermediate_size,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "max_position_embeddings": c.max_position_embeddings,
        "tie_word_embeddings": c.tie_word_embeddings,
    }


def write_model_dir(c: ModelConfig, path: Path) -> None:
    """config.json and a word-level tokenizer ("w0" ... "wN", eos "w1"): enough for the
    engine, which is fed token ids and detokenizes whatever it samples."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    (path / "config.json").write_text(json.dumps(hf_config(c)))
    vocab = {f"w{i}": i for i in range(c.vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "w1"}))


def random_weights(c: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """HF-named tensors of the shape, uniform in +-0.02 (values do not change a step's time,
    but all-zero weights would: tensor cores run faster on zeros)."""
    d = c.head_dim
    shapes = {"model.embed_tokens.weight": (c.vocab_size, c.hidden_size)}
    for i in range(c.num_layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (c.hidden_size,),
            p + "self_attn.q_proj.weight": (c.num_heads * d, c.hidden_size),
            p + "self_attn.k_proj.weight": (c.num_kv_heads * d, c.hidden_size),
            p + "self_attn.v_proj.weight": (c.num_kv_heads * d, c.hidden_size),
            p + "self_attn.o_proj.weight": (c.hidden_size, c.num_heads * d),
            p + "post_attention_layernorm.weight": (c.hidden_size,),
            p + "mlp.gate_proj.weight": (c.intermediate_size, c.hidden_size),
            p + "mlp.up_proj.weight": (c.intermediate_size, c.hidden_size),
            p + "mlp.down_proj.weight": (c.hidden_size, c.intermediate_size),
        }
    shapes["model.norm.weight"] = (c.hidden_size,)
    if not c.tie_word_embeddings:
        shapes["lm_head.weight"] = (c.vocab_size, c.hidden_size)
    gen = torch.Generator().manual_seed(0)
    for name, shape in shapes.items():
        if name.endswith("norm.weight"):
            yield name, torch.ones(shape)
        else:
            yield (
                name,
                torch.empty(shape, dtype=torch.bfloat16).uniform_(-0.02, 0.02, generator=gen),
            )


def fit_roofline(
    shape: ModelShape, accelerator, samples: list[StepSample]
) -> tuple[RooflineParams, float]:
    """The overhead and the two efficiencies that minimize the mean relative error on the
    measured steps (a grid search: three parameters, a few thousand candidates)."""
    best, best_err = RooflineParams(), float("inf")
    overheads = [x * 1e-3 for x in (0.5, 1, 1.5, 2, 3, 4, 6, 8, 10, 12, 15, 20, 25, 30)]
    effs = [x / 100 for x in range(5, 101, 5)]
    for overhead, bw, fl in itertools.product(overheads, effs, effs):
        params = RooflineParams(overhead_s=overhead, bandwidth_efficiency=bw, flops_efficiency=fl)
        model = RooflineStepModel(shape, accelerator, params)
        err = sum(abs(model.step_time_s(s.shape) / s.seconds - 1) for s in samples) / len(samples)
        if err < best_err:
            best, best_err = params, err
    return best, best_err


def print_table(rows: list[dict]) -> None:
    """Mean measured and modelled time per kind of step: decode rows x context per row, and
    prefill tokens joining the step."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        rows_ = r["num_decode_seqs"]
        ctx = r["decode_context_tokens"] // rows_ if rows_ else 0
        key = (rows_, round(ctx, -2), r["num_prefill_tokens"])
        groups.setdefault(key, []).append(r)
    print(
        f"{'decode rows':>11} {'ctx/row':>8} {'prefill':>8} {'n':>4} {'measured ms':>12} "
        f"{'roofline ms':>12} {'fitted ms':>10}"
    )
    for (d, ctx, pre), g in sorted(groups.items()):
        m = sum(r["measured_ms"] for r in g) / len(g)
        r0 = sum(r["roofline_ms"] for r in g) / len(g)
        r1 = sum(r["roofline_fitted_ms"] for r in g) / len(g)
        print(f"{d:>11} {ctx:>8} {pre:>8} {len(g):>4} {m:>12.2f} {r0:>12.2f} {r1:>10.2f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shape", default="llama-8b", help="llama-8b, llama-70b or tiny")
    p.add_argument("--accelerator", default="h200")
    p.add_argument("--device", default="cuda")
    p.add_argument("--kv-cache-gib", type=float, default=80.0)
    p.add_argument("--max-num-batched-tokens", type=int, default=2048)
    p.add_argument("--decode-seqs", default="1,16,64,192")
    p.add_argument("--context-lens", default="128,1024,2048")
    p.add_argument("--prefill-tokens", default="0,512,2048")
    p.add_argument("--output", required=True, help="a directory")
    args = p.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    config = TINY if args.shape == "tiny" else MODEL_SHAPES[args.shape]
    shape = ModelShape(args.shape, config)
    accelerator = get_accelerator(args.accelerator)
    model_dir = Path(tempfile.mkdtemp(prefix="roofline-model-"))
    write_model_dir(config, model_dir)
    # NOTE: the loader reads safetensors; random tensors of the same names stand in for them.
    loader._iter_safetensors = lambda path: random_weights(config)  # type: ignore[assignment]

    from chatfleet.engine.llm_engine import LLMEngine

    started = time.monotonic()
    engine = LLMEngine(
        EngineConfig(
            model=str(model_dir),
            device=args.device,
            weight_format="bf16",
            cache=CacheConfig(kv_cache_memory_bytes=int(args.kv_cache_gib * (1 << 30))),
            scheduler=SchedulerConfig(
                max_num_seqs=max(256, max(int(x) for x in args.decode_seqs.split(",")) + 1),
                max_num_batched_tokens=args.max_num_batched_tokens,
            ),
        )
    )
    load_s = time.monotonic() - started
    grid = CalibrationGrid(
        tuple(int(x) for x in args.decode_seqs.split(",")),
        tuple(int(x) for x in args.context_lens.split(",")),
        tuple(int(x) for x in args.prefill_tokens.split(",")),
        num_decode_steps=4,
        num_warmup_steps=8,
    )
    samples = run_grid(engine, grid, lambda s: print(s, flush=True))
    roofline = RooflineStepModel(shape, accelerator)
    fitted_params, fitted_err = fit_roofline(shape, accelerator, samples)
    fitted = RooflineStepModel(shape, accelerator, fitted_params)
    meta = {"method": "in-process engine steps", "device": str(engine.runner.device)}
    meta |= {"model_shape": args.shape, "weights": "random", "num_samples": len(samples)}
    linear = LinearStepModel.fit(samples, meta)
    linear.save(out / "steps.json")
    rows = []
    for s in samples:
        row = {**dataclasses.asdict(s.shape), "measured_ms": s.seconds * 1e3}
        row["roofline_ms"] = roofline.step_time_s(s.shape) * 1e3
        row["roofline_fitted_ms"] = fitted.step_time_s(s.shape) * 1e3
        rows.append(row)
    err = sum(abs(r["roofline_ms"] / r["measured_ms"] - 1) for r in rows) / len(rows)
    report = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else args.device,
        "torch": torch.__version__,
        "model_shape": args.shape,
        "accelerator_profile": dataclasses.asdict(accelerator),
        "load_s": round(load_s, 1),
        "grid": dataclasses.asdict(grid),
        "roofline_default": {**dataclasses.asdict(RooflineParams()), "mean_abs_error": err},
        "roofline_fitted": {**dataclasses.asdict(fitted_params), "mean_abs_error": fitted_err},
        "linear_fit": linear.describe(),
        "steps": rows,
    }
    (out / "roofline_check.json").write_text(json.dumps(report, indent=1) + "\n")
    print_table(rows)
    print(
        f"{len(rows)} steps; roofline (default) mean |error| {err:.0%}; fitted: overhead "
        f"{fitted_params.overhead_s * 1e3:.1f} ms, bandwidth x{fitted_params.bandwidth_efficiency}"
        f", flops x{fitted_params.flops_efficiency}, mean |error| {fitted_err:.0%}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
