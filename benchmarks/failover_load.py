"""Streams under replica deaths: `chatfleet up` with 3 replicas, 32 concurrent chat streams of
128 tokens (ShareGPT first turns, greedy, ignore_eos), one replica SIGKILLed every 15 s for 2
minutes while `up` restarts it; run with stream resumption on (the default) and off
(`--max-resumptions 0`: every proxy's behaviour, a cut stream ends with an error event).

Per mode: streams started, completed whole, ended by an error event or a broken connection;
TTFT p50/p99; and, for the streams whose first replica was killed while they ran, the resume
pause (their longest gap between two chunks of text) p50/p99.

    .venv/bin/python benchmarks/failover_load.py --out docs/results/failover_load/
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from local_fleet import get_json, start_up
from offline_throughput import cpu_info

from chatfleet.bench.datasets import load_sharegpt

MODEL = "SmolLM2-135M-Instruct"


def one_stream(url: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt[:2000]}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    row: dict[str, Any] = {"start": time.monotonic(), "error": False, "tokens": None}
    chunks: list[float] = []
    try:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=300) as r:
            row["status"], row["replica"] = r.status_code, r.headers.get("x-chatfleet-replica")
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    row["error"] = True
                elif chunk.get("usage"):
                    row["tokens"] = chunk["usage"]["completion_tokens"]
                elif any(c["delta"].get("content") for c in chunk["choices"]):
                    chunks.append(time.monotonic())
    except httpx.HTTPError as e:
        row["exception"] = repr(e)
    row["end"] = time.monotonic()
    row["ttft"] = chunks[0] - row["start"] if chunks else None
    row["max_gap"] = max((b - a for a, b in itertools.pairwise(chunks)), default=0.0)
    row["complete"] = row.get("status") == 200 and not row["error"] and row["tokens"] == max_tokens
    return row


def killer(url: str, every_s: float, until: float, kills: list[dict]) -> None:
    """SIGKILLs one eligible replica every `every_s`, in turn, until `until`."""
    turn = 0
    while time.monotonic() + every_s < until:
        time.sleep(every_s)
        states = sorted(get_json(f"{url}/router/replicas")["replicas"], key=lambda s: s["url"])
        alive = [s for s in states if s["eligible"] and s.get("pid")]
        if not alive:
            continue
        victim = alive[turn % len(alive)]
        turn += 1
        os.kill(victim["pid"], signal.SIGKILL)
        kills.append({"replica": victim["url"], "at": time.monotonic()})


def percentile(values: list[float], q: int) -> float | None:
    if len(values) < 2:
        return values[0] if values else None
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def run_mode(args: argparse.Namespace, resume: bool, prompts: list[str], log: Path) -> dict:
    replica_args = "--kv-cache-memory 256MiB --max-num-seqs 32"
    extra = [] if resume else ["--max-resumptions", "0"]
    proc, url = start_up(args.replicas, "least_loaded", replica_args, log, extra_args=extra)
    rows: list[dict] = []
    kills: list[dict] = []
    until = time.monotonic() + args.duration
    next_prompt = itertools.count()
    try:

        def worker() -> None:
            while time.monotonic() < until:
                rows.append(one_stream(url, prompts[next(next_prompt) % len(prompts)], 128))

        threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
        threads.append(threading.Thread(target=killer, args=(url, args.kill_every, until, kills)))
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
    cut = [
        r
        for r in rows
        if any(k["replica"] == r.get("replica") and r["start"] < k["at"] < r["end"] for k in kills)
    ]
    ttfts = [r["ttft"] for r in rows if r["ttft"] is not None]
    pauses = [r["max_gap"] for r in cut if r["complete"]]
    return {
        "resume": resume,
        "streams": len(rows),
        "completed": sum(r["complete"] for r in rows),
        "error_events": sum(r["error"] for r in rows),
        "broken_connections": sum("exception" in r for r in rows),
        "kills": len(kills),
        "streams_on_a_killed_replica": len(cut),
        "cut_streams_completed": sum(r["complete"] for r in cut),
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p99_s": percentile(ttfts, 99),
        "resume_pause_p50_s": percentile(pauses, 50),
        "resume_pause_p99_s": percentile(pauses, 99),
        "router_resume_metrics": [
            m for m in metrics.splitlines() if "resum" in m and not m.startswith("#")
        ],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--duration", type=float, default=120.0)
    p.add_argument("--kill-every", type=float, default=15.0)
    p.add_argument("--out", default="results/failover_load/")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prompts = [c.turns[0].text for c in load_sharegpt(512, seed=0)]
    modes = [run_mode(args, resume, prompts, out / f"up-{resume}.log") for resume in (True, False)]
    for m in modes:
        print(json.dumps({k: v for k, v in m.items() if k != "router_resume_metrics"}), flush=True)
    result = {"cpu": cpu_info(), "args": vars(args), "modes": modes}
    (out / "failover_load.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
