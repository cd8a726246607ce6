"""`chatfleet` command line: generate, chat, serve, router, up, gateway, keys, stack, bench,
plan, export-hf."""

from __future__ import annotations

import argparse
import sys

from chatfleet.entrypoints.bench import add_bench_args, add_plot_args, cmd_bench, cmd_plot
from chatfleet.entrypoints.gateway import (
    add_gateway_args,
    add_keys_args,
    add_stack_args,
    cmd_gateway,
    cmd_keys,
    cmd_stack,
)
from chatfleet.entrypoints.plan import add_calibrate_args, add_plan_args, cmd_calibrate, cmd_plan
from chatfleet.entrypoints.router import add_router_args, add_up_args, cmd_router, cmd_up
from chatfleet.entrypoints.serve import add_serve_args, cmd_serve
from chatfleet.errors import InvalidRequestError


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="GGUF file or HF dir (default: SmolLM2-135M)")
    p.add_argument("--weight-format", default="auto", choices=["auto", "fp32", "bf16", "int8"])
    p.add_argument("--device", default="cpu")


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)


def _llm(args: argparse.Namespace):
    from chatfleet import LLM

    return LLM(model=args.model, weight_format=args.weight_format, device=args.device)


def _params(args: argparse.Namespace):
    from chatfleet import SamplingParams

    return SamplingParams(
        max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed
    )


def cmd_generate(args: argparse.Namespace) -> int:
    llm = _llm(args)
    params = _params(args)
    if args.chat:
        outputs = llm.chat([[{"role": "user", "content": p}] for p in args.prompt], params)
    else:
        outputs = llm.generate(args.prompt, params)
    for out in outputs:
        print(out.outputs[0].text)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    llm = _llm(args)
    params = _params(args)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chatfleet")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate text for one or more prompts")
    gen.add_argument("--chat", action="store_true", help="wrap each prompt as a user message")
    gen.add_argument("prompt", nargs="+")
    _add_engine_args(gen)
    _add_sampling_args(gen)
    gen.set_defaults(func=cmd_generate)
    chat = sub.add_parser("chat", help="interactive chat on stdin/stdout")
    _add_engine_args(chat)
    _add_sampling_args(chat)
    chat.set_defaults(func=cmd_chat)
    serve = sub.add_parser("serve", help="OpenAI-compatible HTTP server")
    _add_engine_args(serve)
    add_serve_args(serve)
    serve.set_defaults(func=cmd_serve)
    router = sub.add_parser("router", help="OpenAI-compatible router over running replicas")
    add_router_args(router)
    router.add_argument("--replica", action="append", default=[], help="replica base URL")
    router.set_defaults(func=cmd_router)
    up = sub.add_parser("up", help="start N replicas and a router in front of them")
    add_up_args(up)
    up.set_defaults(func=cmd_up)
    gateway = sub.add_parser("gateway", help="users, keys, limits, conversations, web chat")
    add_gateway_args(gateway)
    gateway.set_defaults(func=cmd_gateway)
    keys = sub.add_parser("keys", help="create, list and revoke the gateway's API keys")
    add_keys_args(keys)
    keys.set_defaults(func=cmd_keys)
    stack = sub.add_parser("stack", help="the whole stack: replicas, router and gateway")
    add_stack_args(stack)
    stack.set_defaults(func=cmd_stack)
    bench = sub.add_parser("bench", help="serving benchmark against an OpenAI-compatible server")
    add_bench_args(bench)
    bench.set_defaults(func=cmd_bench)
    # `bench plot` is optional, so `bench --base-url ...` alone runs the benchmark.
    bench_sub = bench.add_subparsers(dest="bench_command")
    plot = bench_sub.add_parser("plot", help="latency CDFs and throughput PNGs from results")
    add_plot_args(plot)
    plot.set_defaults(func=cmd_plot)
    plan = sub.add_parser("plan", help="fleet size and cost for a user base at given SLOs")
    add_plan_args(plan)
    plan.set_defaults(func=cmd_plan)
    plan_sub = plan.add_subparsers(dest="plan_command")
    calibrate = plan_sub.add_parser("calibrate", help="time engine steps; fit steps.json")
    add_calibrate_args(calibrate)
    calibrate.set_defaults(func=cmd_calibrate)
    export = sub.add_parser("export-hf", help="write the model as a HF safetensors directory")
    export.add_argument("--model", default=None)
    export.add_argument("--out", required=True)
    export.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    export.set_defaults(func=cmd_export_hf)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except InvalidRequestError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
