"""Server-test helpers. The `server` fixture is in tests/conftest.py, start_server in
tests/server_process.py."""

from __future__ import annotations

import httpx


def metric(base_url: str, name: str) -> float:
    """Sum of a metric's samples in /metrics."""
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    assert found, f"{name} not in /metrics"
    return total
