"""PNG reports from result files: latency CDFs and throughput against concurrency.

matplotlib is imported here only (the `bench` extra), with the Agg backend so plotting works
on a machine without a display.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from chatfleet.bench.record import RequestRecord
from chatfleet.bench.result import load_result, records_from_result
from chatfleet.bench.summary import e2es_s, itls_s, tpots_s, ttfts_s
from chatfleet.extras import pyplot

LATENCY_CDF_PNG = "latency_cdf.png"
THROUGHPUT_PNG = "throughput_vs_concurrency.png"
_LATENCIES: tuple[tuple[str, Callable[[Sequence[RequestRecord]], list[float]]], ...] = (
    ("TTFT", ttfts_s),
    ("TPOT", tpots_s),
    ("ITL", itls_s),
    ("E2E latency", e2es_s),
)


def concurrency_of(result: dict[str, Any]) -> float:
    """The configured concurrency; for open-loop runs, the measured mean concurrency."""
    configured = result["config"].get("concurrency")
    return float(configured) if configured else float(result["summary"]["mean_concurrency"])


def series_of(result: dict[str, Any]) -> str:
    """Runs with the same label (default: dataset and server) form one throughput line."""
    config = result["config"]
    if config.get("label"):
        return str(config["label"])
    url = str(config.get("base_url") or "").rstrip("/").removesuffix("/v1")
    return f"{config.get('dataset') or 'run'} @ {url}"


def plot_latency_cdfs(results: dict[str, dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for ax, (title, values_of) in zip(axes.flat, _LATENCIES, strict=True):
        for name, result in results.items():
            values_ms = sorted(v * 1e3 for v in values_of(records_from_result(result)))
            if values_ms:
                fractions = [(i + 1) / len(values_ms) for i in range(len(values_ms))]
                ax.step(values_ms, fractions, where="post", label=name)
        ax.set_title(title)
        ax.set_xlabel("ms")
        ax.set_ylabel("fraction of requests" if title != "ITL" else "fraction of gaps")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_throughput(results: dict[str, dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    points: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for result in results.values():
        summary = result["summary"]
        points[series_of(result)].append(
            (
                concurrency_of(result),
                summary["output_token_throughput"],
                summary["request_throughput"],
            )
        )
    fig, (tok_ax, req_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for series, rows in sorted(points.items()):
        rows.sort()
        xs = [r[0] for r in rows]
        tok_ax.plot(xs, [r[1] for r in rows], marker="o", label=series)
        req_ax.plot(xs, [r[2] for r in rows], marker="o", label=series)
    for ax, ylabel in ((tok_ax, "output tokens / s"), (req_ax, "requests / s")):
        ax.set_xlabel("concurrency")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_results(paths: Sequence[str | Path], output_dir: str | Path) -> list[Path]:
    """Write both PNGs into `output_dir`; each result is named by its file name."""
    stems = [Path(p).stem for p in paths]
    results = {
        stem if stems.count(stem) == 1 else str(p): load_result(p)
        for stem, p in zip(stems, paths, strict=True)
    }
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / LATENCY_CDF_PNG, out / THROUGHPUT_PNG]
    plot_latency_cdfs(results, written[0])
    plot_throughput(results, written[1])
    return written
