"""LocalReplicaManager: `chatfleet serve` subprocesses on this machine, supervised.

A replica that exits without being asked to is started again on the same port after a
backoff that doubles per crash (reset once a run lasted `stable_after_s`). The router sees the
dead replica fail, ejects it, and re-admits it after the cool-down once it answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass

from chatfleet.config import flags
from chatfleet.config.router_config import LocalReplicaConfig
from chatfleet.config.server_config import API_KEY_ENV, ServeConfig
from chatfleet.processes import die_with_parent, port_is_free
from chatfleet.router.replica_manager import ReplicaInfo, ReplicaManager

logger = logging.getLogger("chatfleet.up")


@dataclass
class _LocalReplica:
    port: int
    url: str
    proc: asyncio.subprocess.Process
    status: str = "running"
    num_restarts: int = 0
    is_stopping: bool = False
    supervisor: asyncio.Task | None = None

    def info(self) -> ReplicaInfo:
        return ReplicaInfo(self.url, self.url, self.status, self.proc.pid, self.num_restarts)


class LocalReplicaManager(ReplicaManager):
    def __init__(self, config: LocalReplicaConfig, replica: ServeConfig) -> None:
        self.config = config
        # NOTE: the replica's settings travel as the flags they were parsed from
        # (config/flags.py), so `chatfleet serve` rebuilds the same ServeConfig; its key in
        # the environment, where `ps` does not show it.
        self._serve_argv = flags.to_argv(replica, skip=("api_key",))
        key = replica.server.api_key
        self._env = {**os.environ, API_KEY_ENV: key} if key else None
        self._replicas: dict[str, _LocalReplica] = {}  # by url, in start order

    def list(self) -> list[ReplicaInfo]:
        return [r.info() for r in self._replicas.values()]

    def _next_port(self) -> int:
        taken = {r.port for r in self._replicas.values()}
        port = self.config.port_start
        while port in taken or not port_is_free(self.config.host, port):
            port += 1
            if port > 65535:
                raise RuntimeError("no free port for a replica")
        return port

    async def _spawn(self, port: int) -> asyncio.subprocess.Process:
        c = self.config
        cmd = [sys.executable, "-m", "chatfleet.entrypoints.cli", "serve"]
        cmd += ["--host", c.host, "--port", str(port), *self._serve_argv]
        log = None
        if c.log_dir is not None:
            os.makedirs(c.log_dir, exist_ok=True)
            log = open(os.path.join(c.log_dir, f"replica-{port}.log"), "ab")  # noqa: SIM115
        try:
            # NOTE: a session of its own, so a Ctrl-C at the terminal reaches only `up`, which
            # then stops each replica gracefully instead of them all exiting at once.
            return await asyncio.create_subprocess_exec(
                *cmd,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT if log is not None else None,
                start_new_session=True,
                env=self._env,
                preexec_fn=die_with_parent(),
            )
        finally:
            if log is not None:
                log.close()  # the child has its own descriptor

    async def start(self) -> ReplicaInfo:
        port = self._next_port()
        url = f"http://{self.config.host}:{port}"
        try:
            proc = await self._spawn(port)
        except OSError as e:
            raise RuntimeError(f"cannot start a replica: {e}") from e
        replica = _LocalReplica(port, url, proc)
        self._replicas[url] = replica
        replica.supervisor = asyncio.create_task(self._supervise(replica))
        logger.info("replica %s started (pid %d)", url, proc.pid)
        return replica.info()

    async def _supervise(self, replica: _LocalReplica) -> None:
        """Restart the replica whenever it exits, until stop() marks it stopping."""
        c = self.config
        backoff_s = c.restart_backoff_s
        while True:
            started = time.monotonic()
            returncode = await replica.proc.wait()
            if replica.is_stopping:
                return
            if time.monotonic() - started >= c.stable_after_s:
                backoff_s = c.restart_backoff_s
            replica.status = "restarting"
            replica.num_restarts += 1
            logger.warning(
                "replica %s (pid %d) exited with %s; restart %d in %.1f s",
                replica.url,
                replica.proc.pid,
                returncode,
                replica.num_restarts,
                backoff_s,
            )
            await asyncio.sleep(backoff_s)
            backoff_s = min(2 * backoff_s, c.max_restart_backoff_s)
            if replica.is_stopping:
                return
            try:
                replica.proc = await self._spawn(replica.port)
                replica.status = "running"
            except OSError:
                logger.exception("restarting replica %s failed", replica.url)

    async def stop(self, replica_id: str, timeout_s: float = 60.0) -> None:
        replica = self._replicas.get(replica_id)
        if replica is None:
            return
        replica.is_stopping, replica.status = True, "stopping"
        proc = replica.proc
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout_s)
            except TimeoutError:
                logger.warning(
                    "replica %s did not drain in %.0f s; killing it", replica_id, timeout_s
                )
                proc.kill()
                await proc.wait()
        if replica.supervisor is not None:
            replica.supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await replica.supervisor
        replica.status = "stopped"
        self._replicas.pop(replica_id, None)
        logger.info("replica %s stopped", replica_id)
