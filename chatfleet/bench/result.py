"""The result file: {"config": ..., "summary": ..., "requests": [...]}.

The summary is always computed by `summary_from_result` from the JSON form of the records and
the goodput SLO in the config, both when the file is written and when it is checked, so a
saved summary can be reproduced exactly from the raw records next to it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chatfleet.bench.record import RequestRecord
from chatfleet.bench.summary import BenchSummary, parse_slo, summarize

RESULT_VERSION = 1


def records_from_result(result: dict[str, Any]) -> list[RequestRecord]:
    return [RequestRecord.from_json(r) for r in result["requests"]]


def summary_from_result(result: dict[str, Any]) -> dict[str, Any]:
    """The summary of a result dict, recomputed from its "requests" and its config's SLO."""
    slo = parse_slo(result["config"].get("goodput"))
    summary: BenchSummary = summarize(records_from_result(result), slo)
    return dataclasses.asdict(summary)


def build_result(config: dict[str, Any], records: Sequence[RequestRecord]) -> dict[str, Any]:
    result: dict[str, Any] = {
        "version": RESULT_VERSION,
        "config": config,
        "requests": [r.to_json() for r in records],
    }
    result["summary"] = summary_from_result(result)
    return result


def write_result(path: str | Path, result: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Summary first and one line per request: the file reads well from the top and stays
    # small (indenting every chunk time would put each on its own line).
    parts = [f'"{k}": {json.dumps(result[k], indent=1)}' for k in ("version", "config", "summary")]
    rows = ",\n".join(json.dumps(r) for r in result["requests"])
    parts.append(f'"requests": [\n{rows}\n]' if rows else '"requests": []')
    path.write_text("{\n" + ",\n".join(parts) + "\n}\n", encoding="utf-8")


def load_result(path: str | Path) -> dict[str, Any]:
    result = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(result, dict) or not {"config", "summary", "requests"} <= result.keys():
        raise ValueError(f"{path}: not a chatfleet bench result")
    return result
