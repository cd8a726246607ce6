"""RayReplicaManager: the ReplicaManager interface (start / stop / list / health) on Serve.

Serve owns the replicas: it places them, replaces one that dies, and drains one it removes
(no new requests; in-flight ones finish for up to `graceful_shutdown_timeout_s`). This class
changes the deployment's replica count and reads the replica actors Serve runs:

    start()       -> redeploy with count + 1 (the running replicas are left alone)
    stop(id)      -> redeploy with count - 1; Serve picks and drains the replica to remove
    list()/health -> the live `SERVE_REPLICA::<app>#EngineReplica#<id>` actors
With autoscaling on, Serve's autoscaler owns the count: start/stop raise RuntimeError.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayError

from chatfleet.config.deploy_config import RayDeployConfig
from chatfleet.ray_serve.app import ENGINE_DEPLOYMENT, deploy
from chatfleet.router.replica_manager import ReplicaInfo, ReplicaManager

SERVE_NAMESPACE = "serve"


class RayReplicaManager(ReplicaManager):
    def __init__(self, config: RayDeployConfig) -> None:
        self.config = config
        self.num_replicas = config.num_replicas
        self._prefix = f"SERVE_REPLICA::{config.app_name}#{ENGINE_DEPLOYMENT}#"

    def _actor_names(self) -> list[str]:
        names = ray.util.list_named_actors(all_namespaces=True)
        return sorted(
            n["name"]
            for n in names
            if n["namespace"] == SERVE_NAMESPACE and n["name"].startswith(self._prefix)
        )

    def _actor(self, replica_id: str) -> Any:
        return ray.get_actor(self._prefix + replica_id, namespace=SERVE_NAMESPACE)

    def list(self) -> list[ReplicaInfo]:
        """Replica actors Serve runs now (starting, running or draining), by id."""
        return [
            ReplicaInfo(name[len(self._prefix) :], f"ray://{name}", "running")
            for name in self._actor_names()
        ]

    async def _redeploy(self, num_replicas: int) -> None:
        if self.config.is_autoscaling:
            raise RuntimeError("autoscaling is on: Serve's autoscaler owns the replica count")
        self.num_replicas = num_replicas
        await asyncio.to_thread(deploy, self.config, num_replicas)

    async def start(self) -> ReplicaInfo:
        before = {r.replica_id for r in self.list()}
        await self._redeploy(self.num_replicas + 1)
        new = [r for r in self.list() if r.replica_id not in before]
        if not new:
            raise RuntimeError("Serve did not start a replica")
        return new[0]

    async def stop(self, replica_id: str, timeout_s: float = 60.0) -> None:
        """Lowers the count by one. NOTE: Serve, not `replica_id`, decides which replica goes
        (it prefers ones still starting, then the node with the most replicas)."""
        if replica_id not in {r.replica_id for r in self.list()}:
            return
        await self._redeploy(max(1, self.num_replicas - 1))
        deadline = time.monotonic() + timeout_s
        while len(self.list()) > self.num_replicas and time.monotonic() < deadline:
            await asyncio.sleep(0.5)

    async def health(self, replica_id: str, timeout_s: float = 2.0) -> bool:
        """True if Serve's health check of the replica (EngineReplica.check_health) passes."""
        try:
            ref = self._actor(replica_id).check_health.remote()
            await asyncio.wait_for(asyncio.wrap_future(ref.future()), timeout_s)
        except (ValueError, RayError, TimeoutError, GetTimeoutError):
            return False
        return True

    async def stats(self, timeout_s: float = 10.0) -> dict[str, dict[str, Any]]:
        """replica id -> its routing stats (EngineReplica.record_routing_stats)."""
        out: dict[str, dict[str, Any]] = {}
        for info in self.list():
            with contextlib.suppress(ValueError, RayError, TimeoutError):
                ref = self._actor(info.replica_id).record_routing_stats.remote()
                out[info.replica_id] = await asyncio.wait_for(
                    asyncio.wrap_future(ref.future()), timeout_s
                )
        return out

    async def close(self) -> None:
        """Delete the application (every replica drains)."""
        from ray import serve

        await asyncio.to_thread(serve.delete, self.config.app_name)
