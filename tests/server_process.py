"""Real chatfleet processes (`serve`, `router`, `up`) on 127.0.0.1, started and stopped by PID.

Shared by tests/server, tests/bench and tests/router; the session-wide `server` fixture is in
tests/conftest.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import httpx

START_TIMEOUT_S = 300


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
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()


def launch(
    tmp_path, name: str, port: int, *args: str, env: dict[str, str] | None = None
) -> ServerProcess:
    """Start `chatfleet <args>` on 127.0.0.1:`port` without waiting for it."""
    log_path = str(tmp_path / f"{name}-{port}.log")
    cmd = [sys.executable, "-m", "chatfleet.entrypoints.cli", *args]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    return ServerProcess(proc, f"http://127.0.0.1:{port}", log_path)


def wait_ready(
    server: ServerProcess, path: str = "/health", timeout_s: float = START_TIMEOUT_S
) -> ServerProcess:
    """Poll `path` until it answers 200; stop the process and raise if it never does."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"server exited early:\n{server.log()}")
        try:
            if httpx.get(f"{server.base_url}{path}", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"server did not become ready:\n{server.log()}")


def launch_server(tmp_path, *args: str, env: dict[str, str] | None = None) -> ServerProcess:
    """`chatfleet serve` on a free port with a small KV budget; not yet waited for."""
    port = free_port()
    serve = ["serve", "--host", "127.0.0.1", "--port", str(port), "--kv-cache-memory", "256MiB"]
    return launch(tmp_path, "server", port, *serve, *args, env=env)


def start_server(tmp_path, *args: str, env: dict[str, str] | None = None) -> ServerProcess:
    return wait_ready(launch_server(tmp_path, *args, env=env))
