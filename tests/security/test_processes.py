"""No orphans: what a stack starts dies with it, however it dies, and a start that finds its
ports taken says so instead of half-starting."""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading

import httpx
import pytest

from tests.server_process import free_port, launch, wait_ready, wait_until

UP_ARGS = "--replica-threads 1 --replica-args '--kv-cache-memory 64MiB --max-num-seqs 4'"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is gone for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def _descendants(pid: int) -> list[int]:
    """Every process started, directly or not, by `pid` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().split(") ", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    out, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        out += children
        frontier = children
    return out


def _stack(tmp_path, gateway_port: int, router_port: int):
    args = ["stack", "--port", str(gateway_port), "--router-port", str(router_port)]
    args += ["--replicas", "1", "--up-args", UP_ARGS, "--admin-key-file", ""]
    args += ["--db", f"sqlite:///{tmp_path}/gateway-{gateway_port}.db"]
    return launch(tmp_path, "stack", gateway_port, *args, new_session=True)


def test_a_killed_stack_takes_its_router_and_replicas_with_it(tmp_path):
    gateway_port, router_port = free_port(), free_port()
    stack = _stack(tmp_path, gateway_port, router_port)
    wait_ready(stack, "/health", timeout_s=300)
    children = _descendants(stack.proc.pid)
    assert len(children) >= 2  # `up` and its replica
    os.killpg(stack.proc.pid, signal.SIGKILL)  # as an operator's kill -9 of the group would
    stack.proc.wait(10)
    try:
        assert wait_until(lambda: not any(_alive(p) for p in children), 60), [
            p for p in children if _alive(p)
        ]
    finally:  # what outlived the stack (the bug this test finds) is stopped all the same
        for pid in children:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    # The same command again finds its ports free and serves.
    again = _stack(tmp_path, gateway_port, router_port)
    try:
        wait_ready(again, "/health", timeout_s=300)
        assert httpx.get(f"http://127.0.0.1:{router_port}/ready", timeout=10).status_code == 200
    finally:
        again.stop(timeout_s=120)


class _Answers200(http.server.BaseHTTPRequestHandler):
    """Someone else's server on the port: it says yes to everything (/ready included)."""

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"status": "ready"}')

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("command", ["up", "stack"])
def test_a_start_on_taken_ports_says_so_and_exits_nonzero(tmp_path, command):
    """Not a half start: `up` starts no replica, and `stack` does not take the server it
    finds on its router port (a stack left over from an earlier run) for its own."""
    holder = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answers200)
    threading.Thread(target=holder.serve_forever, daemon=True).start()
    port = holder.server_address[1]
    try:
        if command == "up":
            argv = ["up", "--port", str(port), "--replicas", "1"]
        else:
            argv = ["stack", "--router-port", str(port), "--port", str(free_port())]
            argv += ["--admin-key-file", "", "--db", f"sqlite:///{tmp_path}/gw.db"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "chatfleet.entrypoints.cli", *argv],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, err = proc.communicate()
            pytest.fail(f"{command} kept running on a taken port:\n{err[-800:]}")
        assert proc.returncode != 0 and "already in use" in err, err[-800:]
        assert "replica" not in err.lower() or "started" not in err, err[-800:]
    finally:
        holder.shutdown()
