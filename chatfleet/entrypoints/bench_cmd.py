"""`chatfleet bench`: serving benchmark against any OpenAI-compatible server; `bench plot`.

Exit status: 0 once the run happened (failed requests are results, recorded in the JSON),
1 if it could not run at all (no dataset, server unreachable), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import functools
import math
import sys
from typing import Any

from chatfleet.bench.result import build_result, load_result, records_from_result, write_result
from chatfleet.bench.summary import format_summary, parse_slo
from chatfleet.bench.workload import DATASETS, WorkloadParams, build_workload, replay_lengths
from chatfleet.entrypoints.parsing import add_command

# Not stored in the result: secrets, and argparse's own bookkeeping.
_PRIVATE_ARGS = {"api_key", "func", "command", "bench_command"}


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive: {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its error message
    return parse


def _slo_text(text: str) -> str:
    try:
        parse_slo(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def add_bench_args(p: argparse.ArgumentParser) -> None:
    pos_int, pos_float = _positive(int), _positive(float)
    p.add_argument("--base-url", help="server root, e.g. http://127.0.0.1:8001")
    p.add_argument("--model", default=None, help="default: the first model of /v1/models")
    p.add_argument("--api-key", default=None)
    p.add_argument("--label", default=None, help="series name in plots (default: dataset @ URL)")
    p.add_argument("--dataset", choices=DATASETS, default="sharegpt")
    p.add_argument("--num-prompts", type=pos_int, default=100, help="conversations for multi-turn")
    p.add_argument("--concurrency", type=pos_int, default=None, help="sessions in flight at most")
    p.add_argument("--request-rate", type=pos_float, default=None, help="arrivals per second")
    p.add_argument("--burstiness", type=pos_float, default=1.0, help="gamma shape; 1 = Poisson")
    p.add_argument("--max-tokens", type=pos_int, default=256, help="cap on every output length")
    p.add_argument("--input-len", type=pos_int, default=256, help="random/shared-prefix words")
    p.add_argument("--output-len", type=pos_int, default=128, help="random/shared-prefix tokens")
    p.add_argument("--prefix-len", type=pos_int, default=1024, help="shared-prefix words")
    p.add_argument("--num-groups", type=pos_int, default=4, help="shared-prefix groups")
    p.add_argument("--num-turns", type=pos_int, default=2, help="multi-turn turns per chat")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--ignore-eos", action="store_true", help="send ignore_eos (vLLM, chatfleet)")
    p.add_argument(
        "--lengths-from",
        default=None,
        help="a result JSON: each request's max_tokens is the output length it got there "
        "(with --ignore-eos: the same work as that run)",
    )
    p.add_argument("--goodput", type=_slo_text, default=None, help="SLOs, e.g. ttft:500,tpot:50")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=pos_float, default=600.0, help="seconds per request")
    p.add_argument("--tokenizer", default=None, help="GGUF or HF dir (default: bundled model)")
    p.add_argument("--output", default=None, help="result JSON path")
    p.add_argument("--no-progress", action="store_true")


def add_plot_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", nargs="+", help="result JSON files")
    p.add_argument("--output-dir", required=True)


@functools.cache
def _tokenizer(path: str | None) -> Any:
    from chatfleet.modelfile.tokenizer import Tokenizer

    return Tokenizer.from_model_path(path)


def _workload_params(args: argparse.Namespace) -> WorkloadParams:
    names = {f.name for f in dataclasses.fields(WorkloadParams)}
    return WorkloadParams(**{k: v for k, v in vars(args).items() if k in names})


def cmd_bench(args: argparse.Namespace) -> int:
    if not args.base_url:
        print("error: --base-url is required", file=sys.stderr)
        return 2
    if args.concurrency is None and args.request_rate is None:
        print("error: give --concurrency and/or --request-rate", file=sys.stderr)
        return 2
    # NOTE: imported here: httpx belongs to the `bench` extra, and `chatfleet serve` must start
    # without it.
    import httpx

    from chatfleet.bench.client import ClientConfig
    from chatfleet.bench.load_runner import LoadConfig, fill_token_counts, run_benchmark

    tokenizer = functools.partial(_tokenizer, args.tokenizer)
    try:
        sessions = build_workload(_workload_params(args), tokenizer)
        if args.lengths_from:
            sessions = replay_lengths(sessions, _lengths(args.lengths_from))
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    client_config = ClientConfig(
        args.base_url, args.model, args.api_key, args.temperature, args.ignore_eos, args.timeout
    )
    rate = math.inf if args.request_rate is None else args.request_rate
    load = LoadConfig(args.concurrency, rate, args.burstiness, args.seed)
    started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    try:
        run = run_benchmark(sessions, client_config, load, not args.no_progress)
        model, exchanges = asyncio.run(run)
    except httpx.HTTPError as e:
        print(f"error: cannot reach {client_config.api_url}: {e}", file=sys.stderr)
        return 1
    config = {k: v for k, v in vars(args).items() if k not in _PRIVATE_ARGS}
    config.update(served_model=model, started_at=started_at, has_api_key=bool(args.api_key))
    result = build_result(config, fill_token_counts(exchanges, tokenizer))
    if args.output:
        write_result(args.output, result)
    print(format_summary(result["summary"]))
    return 0


def _lengths(path: str) -> dict[tuple[int, int], int]:
    """(session index, turn index) -> completion tokens, of a result's successful requests."""
    return {
        (r.session_index, r.turn_index): r.completion_tokens
        for r in records_from_result(load_result(path))
        if r.is_success and r.completion_tokens
    }


def cmd_plot(args: argparse.Namespace) -> int:
    from chatfleet.bench.plot import plot_results

    try:
        paths = plot_results(args.results, args.output_dir)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


def register(sub: Any) -> None:
    about = "serving benchmark against an OpenAI-compatible server"
    bench = add_command(sub, "bench", about, add_bench_args, cmd_bench)
    # `bench plot` is optional, so `bench --base-url ...` alone runs the benchmark.
    about = "latency CDFs and throughput PNGs from results"
    add_command(bench.add_subparsers(dest="bench_command"), "plot", about, add_plot_args, cmd_plot)
