"""ReplicaManager: starts and stops engine replicas; the router only ever sees their URLs.

`LocalReplicaManager` (local_replica_manager.py) runs `chatfleet serve` subprocesses on this
machine; a backend for many machines (Ray) implements the same four methods and plugs into
`chatfleet up` and the autoscaler unchanged.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from dataclasses import dataclass

import httpx

# Replica lifecycle, as `ReplicaInfo.status` reports it (the process, not its health):
#   running --exited--> restarting --backoff--> running ... ; stop(): stopping -> stopped
STATUSES = ("running", "restarting", "stopping", "stopped")


@dataclass(frozen=True)
class ReplicaInfo:
    replica_id: str
    url: str  # base URL the router sends requests to
    status: str  # one of STATUSES
    pid: int | None = None  # the serving process, where the backend has one
    num_restarts: int = 0


class ReplicaManager(ABC):
    """Owns replica processes (or actors); every method is safe to call from the event loop."""

    @abstractmethod
    async def start(self) -> ReplicaInfo:
        """Launch one more replica and return at once, before its model is loaded; the router
        admits it after its first good health probe. Raises RuntimeError if it cannot launch."""

    @abstractmethod
    async def stop(self, replica_id: str, timeout_s: float = 60.0) -> None:
        """Stop a replica gracefully (SIGTERM: it drains its in-flight requests), forcefully
        after `timeout_s`; it is not restarted. Unknown ids are ignored."""

    @abstractmethod
    def list(self) -> list[ReplicaInfo]:
        """Every replica not yet stopped, in start order."""

    async def health(self, replica_id: str, timeout_s: float = 2.0) -> bool:
        """True if the replica answers /health with 200 now."""
        info = next((r for r in self.list() if r.replica_id == replica_id), None)
        if info is None:
            return False
        try:
            async with httpx.AsyncClient(timeout=timeout_s) as client:
                return (await client.get(f"{info.url}/health")).status_code == 200
        except httpx.HTTPError:
            return False

    async def close(self) -> None:
        """Stop every replica, all at once."""
        await asyncio.gather(*(self.stop(info.replica_id) for info in self.list()))
