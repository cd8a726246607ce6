"""`chatfleet bench plot` writes PNGs from result files."""

from __future__ import annotations

from chatfleet.bench.record import RequestRecord
from chatfleet.bench.result import build_result, write_result
from chatfleet.entrypoints.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _result(concurrency: int, step_s: float) -> dict:
    records = [
        RequestRecord(
            i,
            0,
            0.1 * i,
            0.3,
            tuple(0.1 + step_s * k for k in range(4)),
            4,
            200,
            prompt_tokens=9,
            completion_tokens=4,
            token_count_source="usage",
        )
        for i in range(5)
    ]
    config = {"base_url": "http://x", "concurrency": concurrency, "goodput": None}
    return build_result(config, records)


def test_plot_writes_pngs(tmp_path, capsys):
    paths = []
    for c, step in ((1, 0.01), (4, 0.03)):
        paths.append(tmp_path / f"c{c}.json")
        write_result(paths[-1], _result(c, step))
    out = tmp_path / "plots"
    assert main(["bench", "plot", *map(str, paths), "--output-dir", str(out)]) == 0
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == ["latency_cdf.png", "throughput_vs_concurrency.png"]
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in pngs)
    assert "latency_cdf.png" in capsys.readouterr().out
