"""`chatfleet generate`, `chatfleet chat` (the engine in this process, no server) and
`chatfleet export-hf`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from chatfleet.config import flags
from chatfleet.config.engine_config import EngineConfig

# `--seed` is the sampling seed here, not the engine's.
_SAMPLING_SEED = ("seed",)


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)


def _llm(args: argparse.Namespace) -> Any:
    from chatfleet.llm import LLM

    return LLM.from_config(flags.from_args(EngineConfig, args, skip=_SAMPLING_SEED))


def _params(args: argparse.Namespace) -> Any:
    from chatfleet.sampling_params import SamplingParams

    return SamplingParams(
        max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed
    )


def cmd_generate(args: argparse.Namespace) -> int:
    llm, params = _llm(args), _params(args)
    if args.chat:
        outputs = llm.chat([[{"role": "user", "content": p}] for p in args.prompt], params)
    else:
        outputs = llm.generate(args.prompt, params)
    for out in outputs:
        print(out.outputs[0].text)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    llm, params = _llm(args), _params(args)
    history: list[dict[str, str]] = []
    print("chatfleet chat: type a message, Ctrl-D to quit.", flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        history.append({"role": "user", "content": line.rstrip("\n")})
        reply = llm.chat(history, params)[0].outputs[0].text
        history.append({"role": "assistant", "content": reply})
        print(reply, flush=True)
    return 0


def cmd_export_hf(args: argparse.Namespace) -> int:
    import torch

    from chatfleet.model.export import export_hf_dir

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    export_hf_dir(args.model, args.out, dtype)
    print(args.out)
    return 0


def register(sub: Any) -> None:
    gen = sub.add_parser("generate", help="generate text for one or more prompts")
    gen.add_argument("--chat", action="store_true", help="wrap each prompt as a user message")
    gen.add_argument("prompt", nargs="+")
    chat = sub.add_parser("chat", help="interactive chat on stdin/stdout")
    for p, func in ((gen, cmd_generate), (chat, cmd_chat)):
        flags.add_flags(p, EngineConfig, skip=_SAMPLING_SEED)
        _add_sampling_args(p)
        p.set_defaults(func=func)
    export = sub.add_parser("export-hf", help="write the model as a HF safetensors directory")
    export.add_argument("--model", default=None)
    export.add_argument("--out", required=True)
    export.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    export.set_defaults(func=cmd_export_hf)
