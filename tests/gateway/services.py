"""Real PostgreSQL 15 and Redis servers on 127.0.0.1 for the gateway tests, started and
stopped by PID. `make test` installs them (Debian's postgresql-15 and redis-server).

PostgreSQL's initdb refuses to run as root, so the cluster lives in a temp dir owned by the
`postgres` user and both initdb and the server run as that user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import uuid
from dataclasses import dataclass

import pytest

from tests.server_process import free_port, stop_process, wait_started

PG_BIN = "/usr/lib/postgresql/15/bin"
START_TIMEOUT_S = 30


@dataclass
class Service:
    proc: subprocess.Popen
    url: str
    root: str  # temp dir, removed on stop

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_process(self.proc, sig)
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        with contextlib.suppress(OSError), open(os.path.join(self.root, "server.log")) as f:
            return f.read()
        return ""


def _wait(service: Service, ready) -> Service:
    if wait_started(service.proc, ready, START_TIMEOUT_S):
        return service
    service.stop(signal.SIGKILL)
    pytest.fail(f"{service.url} did not start:\n{service.log()}")


def start_postgres() -> Service:
    if not os.path.exists(os.path.join(PG_BIN, "initdb")):
        pytest.fail("PostgreSQL 15 is not installed; `make test` installs postgresql-15")
    if os.geteuid() != 0:
        pytest.fail("the PostgreSQL tests start the server as user postgres: run them as root")
    import psycopg

    owner = pwd.getpwnam("postgres")
    root = tempfile.mkdtemp(prefix="chatfleet-pg-")
    os.chown(root, owner.pw_uid, owner.pw_gid)
    data = os.path.join(root, "data")
    subprocess.run(
        [f"{PG_BIN}/initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8"]
        + ["--no-sync", "--no-instructions"],
        user="postgres",
        cwd=root,
        check=True,
        capture_output=True,
    )
    port = free_port()
    # NOTE: fsync off: the tests kill gateways, never this server, so nothing is lost.
    settings = ["listen_addresses=127.0.0.1", "fsync=off", "full_page_writes=off"]
    cmd = [f"{PG_BIN}/postgres", "-D", data, "-p", str(port), "-k", root]
    for s in settings:
        cmd += ["-c", s]
    with open(os.path.join(root, "server.log"), "w") as log:
        proc = subprocess.Popen(cmd, user="postgres", cwd=root, stdout=log, stderr=log)
    service = Service(proc, f"postgresql://postgres@127.0.0.1:{port}/postgres", root)

    def ready() -> bool:
        with psycopg.connect(service.url, connect_timeout=2):
            return True

    return _wait(service, ready)


def create_database(server_url: str) -> str:
    """A fresh, empty database on the server; its URL."""
    import psycopg

    name = f"gw_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server_url.rsplit("/", 1)[0] + f"/{name}"


def start_redis() -> Service:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed; `make test` installs it")
    import redis

    root = tempfile.mkdtemp(prefix="chatfleet-redis-")
    port = free_port()
    cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    cmd += ["--dir", root, "--logfile", os.path.join(root, "server.log")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    service = Service(proc, f"redis://127.0.0.1:{port}/0", root)
    return _wait(service, lambda: redis.Redis.from_url(service.url).ping())
