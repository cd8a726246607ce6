"""A two-node Ray cluster on one machine, started with the `ray` CLI and stopped by PID.

Each node gets its own temp dir (so its own sockets and logs); ports not given are picked by
Ray. Only processes this object started are stopped: those whose command line names one of
its temp dirs or its GCS port, and their children (`ray stop` would stop every Ray here).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from tests.server_process import free_port

RAY = os.path.join(os.path.dirname(sys.executable), "ray")
# Fast node-death detection: a killed raylet is declared dead in ~3 s instead of ~15 s.
FAST_HEALTH_ENV = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}
# NOTE: explicit, for every node and the driver: with the mode unset, Ray turns token auth
# on for some processes (a ~/.ray/auth_token left by any local ray.init()) and not others.
AUTH_ENV = {"RAY_AUTH_MODE": "disabled"}


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def _pids_matching(pattern: str) -> set[int]:
    found = set()
    for name in os.listdir("/proc"):
        if name.isdigit() and re.search(pattern, _cmdline(int(name))):
            found.add(int(name))
    return found


def _with_descendants(pids: set[int]) -> set[int]:
    todo, seen = list(pids), set()
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo.extend(_children(pid))
    return seen


def kill_pids(pids: set[int], grace_s: float = 3.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in pids):
            time.sleep(0.1)


@dataclass
class LocalCluster:
    """Head node (resource head_node) + worker node (resource worker_node)."""

    root: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="cfray-", dir="/tmp"))
    gcs_port: int = field(default_factory=free_port)
    node_cpus: int = 2

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def _start(self, name: str, *args: str, env: dict[str, str] | None = None) -> None:
        cmd = [RAY, "start", f"--temp-dir={self.root}/{name}", f"--num-cpus={self.node_cpus}"]
        cmd += ["--object-store-memory=100000000", "--disable-usage-stats", *args]
        out = subprocess.run(
            cmd,
            env={**os.environ, **AUTH_ENV, **(env or {})},
            capture_output=True,
            text=True,
            timeout=120,
        )
        if out.returncode != 0:
            raise RuntimeError(f"ray start {name} failed:\n{out.stdout}\n{out.stderr}")

    def start(self) -> LocalCluster:
        self._start(
            "head",
            "--head",
            f"--port={self.gcs_port}",
            "--include-dashboard=false",
            '--resources={"head_node": 1}',
            env=FAST_HEALTH_ENV,
        )
        self.start_worker()
        return self

    def start_worker(self) -> None:
        self._start("worker", f"--address={self.address}", '--resources={"worker_node": 1}')

    def worker_raylet_pids(self) -> set[int]:
        worker = re.escape(f"{self.root}/worker/")
        return {p for p in _pids_matching(worker) if "raylet/raylet" in _cmdline(p)}

    def kill_worker_node(self) -> None:
        """SIGKILL the worker node's raylet: its replicas (children) die with it."""
        kill_pids(self.worker_raylet_pids(), grace_s=5.0)

    def stop(self) -> None:
        """Stop every process of this cluster: those naming its temp dir or its GCS address
        (the client server names only the latter), and their children."""
        assert self.root.startswith("/tmp/cfray-") and self.gcs_port > 1024
        pattern = rf"{re.escape(self.root)}/|:{self.gcs_port}\b"
        kill_pids(_with_descendants(_pids_matching(pattern)))
        shutil.rmtree(self.root, ignore_errors=True)
