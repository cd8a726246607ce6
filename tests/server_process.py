"""Real processes on 127.0.0.1 (chatfleet `serve`, `router`, `up`, `gateway`; PostgreSQL and
Redis through tests/gateway/services.py), started and stopped by PID, and the bounded waits
every test uses. The session-wide `server` fixture is in tests/conftest.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

START_TIMEOUT_S = 300


def wait_until(predicate: Callable[[], bool], timeout_s: float = 30.0, interval_s=0.1) -> bool:
    """Poll `predicate` until it holds (True) or `timeout_s` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return False


def wait_started(proc: subprocess.Popen, ready: Callable[[], bool], timeout_s: float) -> bool:
    """Whether `ready()` held before `timeout_s` passed and while `proc` still ran (a
    `ready` that raises counts as not yet)."""

    def check() -> bool:
        if proc.poll() is not None:
            raise ProcessLookupError(f"exited with {proc.returncode}")
        try:
            return bool(ready())
        except Exception:
            return False

    try:
        return wait_until(check, timeout_s, 0.2)
    except ProcessLookupError:
        return False


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int:
    """Signal `proc` (if it still runs) and wait; SIGKILL after `timeout_s`. Its exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    base_url: str
    log_path: str

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int:
        return stop_process(self.proc, sig, timeout_s)

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()


def launch(
    tmp_path,
    name: str,
    port: int,
    *args: str,
    env: dict[str, str] | None = None,
    new_session: bool = False,
) -> ServerProcess:
    """Start `chatfleet <args>` on 127.0.0.1:`port` without waiting for it (`new_session`:
    in a process group of its own, which a test can kill whole)."""
    log_path = str(tmp_path / f"{name}-{port}.log")
    cmd = [sys.executable, "-m", "chatfleet.entrypoints.cli", *args]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=new_session,
        )
    return ServerProcess(proc, f"http://127.0.0.1:{port}", log_path)


def wait_ready(
    server: ServerProcess, path: str = "/health", timeout_s: float = START_TIMEOUT_S
) -> ServerProcess:
    """Poll `path` until it answers 200; stop the process and raise if it never does."""

    def ready() -> bool:
        return httpx.get(f"{server.base_url}{path}", timeout=2).status_code == 200

    if wait_started(server.proc, ready, timeout_s):
        return server
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"server did not become ready:\n{server.log()}")


def launch_server(tmp_path, *args: str, env: dict[str, str] | None = None) -> ServerProcess:
    """`chatfleet serve` on a free port with a small KV budget; not yet waited for."""
    port = free_port()
    serve = ["serve", "--host", "127.0.0.1", "--port", str(port), "--kv-cache-memory", "256MiB"]
    return launch(tmp_path, "server", port, *serve, *args, env=env)


def start_server(tmp_path, *args: str, env: dict[str, str] | None = None) -> ServerProcess:
    return wait_ready(launch_server(tmp_path, *args, env=env))
