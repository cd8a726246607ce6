"""RayDeployConfig from flags and deploy.yaml, and the Serve options it maps to (no cluster)."""

from __future__ import annotations

import pytest

from chatfleet.config.deploy_config import RayDeployConfig, load_file
from chatfleet.entrypoints.cli import main
from chatfleet.ray_serve.app import _version, app_builder, build_application

DEPLOY_YAML = """
address: auto
num_replicas: 2
min_replicas: 1
max_replicas: 4
target_ongoing_requests: 6
replica_cpus: 2
replica_resources: {worker_node: 1}
replica: {kv-cache-memory: 1GiB, max_num_seqs: 32, served_model_name: [a, b]}
policy: {name: least_loaded}
"""


def test_yaml_overrides_and_autoscaling_mapping(tmp_path):
    path = tmp_path / "deploy.yaml"
    path.write_text(DEPLOY_YAML)
    config = RayDeployConfig(port=9000).with_overrides(load_file(str(path)))
    assert config.port == 9000 and config.address == "auto"
    assert config.policy.name == "least_loaded" and config.prefix.block_chars == 64
    assert config.autoscaling_config() == {
        "min_replicas": 1,
        "max_replicas": 4,
        "initial_replicas": 2,
        "target_ongoing_requests": 6,
        "upscale_delay_s": 10.0,
        "downscale_delay_s": 60.0,
        "look_back_period_s": 12.0,
    }
    engine, server = config.replica.engine, config.replica.server
    assert engine.cache.kv_cache_memory_bytes == 1 << 30 and engine.scheduler.max_num_seqs == 32
    assert server.model_names == ("a", "b")
    assert RayDeployConfig(num_replicas=3).autoscaling_config() is None


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(KeyError):
        RayDeployConfig().with_overrides({"num_replica": 2})
    with pytest.raises(KeyError, match="kv_cache_memory"):
        RayDeployConfig().with_overrides({"replica": {"kv_cache_mem": "1GiB"}})
    with pytest.raises(ValueError, match="not a size"):
        RayDeployConfig().with_overrides({"replica": {"kv_cache_memory": "lots"}})
    with pytest.raises(ValueError):
        RayDeployConfig(min_replicas=3, max_replicas=2)
    with pytest.raises(ValueError):
        RayDeployConfig(request_router="random")
    bad = tmp_path / "bad.yaml"
    bad.write_text("num_replica: 2\n")
    assert main(["up", "--backend", "ray", "--config", str(bad)]) == 2


def test_application_builds_for_serve_tooling():
    app = build_application(RayDeployConfig(num_replicas=2))
    assert app is not None
    assert app_builder({"num_replicas": 1, "policy": {"name": "session"}}) is not None


def test_an_ingress_beyond_loopback_without_a_key_is_refused(tmp_path, capsys, monkeypatch):
    """Checked on the host the deploy.yaml sets (it overrides --host), before Ray starts."""
    monkeypatch.delenv("CHATFLEET_API_KEY", raising=False)
    open_host = tmp_path / "open.yaml"
    open_host.write_text("host: 0.0.0.0\n")
    assert main(["up", "--backend", "ray", "--config", str(open_host)]) == 2
    assert "would answer anyone" in capsys.readouterr().out


def test_a_new_key_is_a_new_deployment_version_that_does_not_show_it():
    """Serve keeps replicas whose version is unchanged: a rotated key must restart them."""
    base = RayDeployConfig()
    keyed = base.with_overrides({"replica": {"api_key": "k-one"}})
    rotated = base.with_overrides({"replica": {"api_key": "k-two"}})
    versions = {_version(c, "Ingress") for c in (base, keyed, rotated)}
    assert len(versions) == 3
    assert not any("k-one" in v or "k-two" in v for v in versions)
    # Only the replica count may change without a new version (start/stop one replica).
    assert _version(RayDeployConfig(num_replicas=3), "Ingress") == _version(base, "Ingress")
