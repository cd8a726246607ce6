"""Start `chatfleet up` (N local replicas behind the router) for a benchmark and wait for it.

Shared by the benchmark scripts in this folder (import it as `local_fleet`).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def start_up(
    replicas: int,
    policy: str,
    replica_args: str,
    log_path: Path,
    timeout_s: float = 300,
    port: int | None = None,
    extra_args: list[str] | None = None,
) -> tuple[subprocess.Popen, str]:
    """(the `chatfleet up` process, the router's URL) once every replica is eligible.

    The router listens on `port` (a free one if None), replicas on the ports after it. Each
    replica runs on one thread; stop the process with SIGTERM.
    """
    port = port or free_port()
    cmd = [str(BIN / "chatfleet"), "up", "--port", str(port), "--replicas", str(replicas)]
    cmd += ["--policy", policy, "--replica-threads", "1", "--replica-port-start", str(port + 1)]
    cmd += ["--replica-args", replica_args, "--log-dir", str(log_path.with_suffix(""))]
    cmd += extra_args or []
    proc = subprocess.Popen(cmd, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)  # noqa: SIM115
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"`chatfleet up` exited; see {log_path}")
        try:
            states = get_json(f"{url}/router/replicas")["replicas"]
            if len(states) == replicas and all(r["eligible"] for r in states):
                return proc, url
        except OSError:
            pass
        time.sleep(1)
    proc.kill()
    raise RuntimeError("replicas did not come up")
