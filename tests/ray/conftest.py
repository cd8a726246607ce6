"""One two-node Ray cluster for the whole package; deployments replaced per test.

Skipped when Ray is not installed (`make test` installs `.[dev,ray]`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from chatfleet.config.deploy_config import RayDeployConfig  # noqa: E402
from chatfleet.config.flags import from_mapping  # noqa: E402
from chatfleet.config.server_config import ServeConfig  # noqa: E402
from chatfleet.ray_serve.app import connect, deploy  # noqa: E402
from chatfleet.ray_serve.ray_replica_manager import RayReplicaManager  # noqa: E402
from tests.ray.cluster import AUTH_ENV, LocalCluster  # noqa: E402
from tests.server_process import free_port, wait_until  # noqa: E402

MODEL = "SmolLM2-135M-Instruct"
# Small replicas: one thread, a small KV cache; two or three share this machine's 2 cores.
REPLICA = from_mapping(
    ServeConfig,
    {
        "num_threads": 1,
        "kv_cache_memory": "64MiB",
        "max_num_seqs": 8,
        "max_queue_len": 16,
        "max_model_len": 2048,
    },
)


@dataclasses.dataclass
class Fleet:
    """A running chatfleet application on the test cluster."""

    config: RayDeployConfig
    manager: RayReplicaManager

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.config.port}"

    def stats(self) -> dict[str, dict[str, Any]]:
        return asyncio.run(self.manager.stats())

    def num_replicas(self) -> int:
        return len(self.manager.list())


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    c = LocalCluster()
    saved = {k: os.environ.get(k) for k in AUTH_ENV}
    os.environ.update(AUTH_ENV)
    try:
        c.start()
        ray.init(address=c.address, namespace="chatfleet", log_to_driver=False)
        yield c
    finally:
        try:
            if ray.is_initialized():
                serve.shutdown()
                ray.shutdown()
        finally:
            c.stop()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


@pytest.fixture(scope="session")
def serve_port(cluster) -> int:
    return free_port()  # Serve's proxy keeps the port of its first start


def alive_nodes() -> int:
    return sum(1 for n in ray.nodes() if n["Alive"])


@pytest.fixture
def two_nodes(cluster) -> LocalCluster:
    """The worker node is up (a test before may have killed it)."""
    if not cluster.worker_raylet_pids():
        cluster.start_worker()
    assert wait_until(lambda: alive_nodes() == 2, 60), "worker node did not join"
    return cluster


@pytest.fixture
def fleet_factory(cluster, serve_port) -> Callable[..., Fleet]:
    """Deploy (or update in place) the app with RayDeployConfig overrides; blocks until ready."""

    def make(fresh: bool = True, **overrides: Any) -> Fleet:
        """`fresh`: delete the app first, so Serve places every replica anew (spread over the
        nodes) instead of updating it in place beside the old replicas."""
        config = RayDeployConfig(
            address=cluster.address,
            port=serve_port,
            ingress_resources={"head_node": 0.01},  # the ingress must outlive the worker node
            **{"replica": REPLICA, **overrides},
        )
        if fresh:
            connect(config)
            serve.delete(config.app_name)
        deploy(config)
        return Fleet(config, RayReplicaManager(config))

    return make
