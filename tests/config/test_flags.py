"""Config dataclasses as settings: flags, YAML mappings and argv all read one table."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from chatfleet.config import flags
from chatfleet.config.engine_config import CacheConfig, EngineConfig, SchedulerConfig
from chatfleet.config.gateway_config import GatewayConfig
from chatfleet.config.router_config import POLICY_NAMES, AutoscaleConfig, RouterConfig
from chatfleet.config.server_config import ServeConfig, ServerConfig
from chatfleet.router.policies import POLICIES


def _parse(cls: type, argv: list[str], **kwargs) -> object:
    parser = argparse.ArgumentParser(exit_on_error=False)
    flags.add_flags(parser, cls, **kwargs)
    return flags.from_args(cls, parser.parse_args(argv), **kwargs)


def test_serve_flags_build_the_nested_config():
    config = _parse(
        ServeConfig,
        ["--kv-cache-memory", "512MiB", "--max-num-seqs", "16", "--no-enable-prefix-caching"]
        + ["--request-timeout", "5", "--served-model-name", "a", "b"],
    )
    assert isinstance(config, ServeConfig)
    assert config.engine.cache == CacheConfig(
        kv_cache_memory_bytes=512 << 20, enable_prefix_caching=False
    )
    assert config.engine.scheduler == SchedulerConfig(max_num_seqs=16)
    assert config.server == ServerConfig(request_timeout_s=5.0, model_names=("a", "b"))


def test_argv_round_trips_every_kind_of_setting():
    original = ServeConfig(
        EngineConfig(
            model="/m.gguf",
            num_threads=3,
            fused_decode=False,
            step_trace="/t-{pid}.jsonl",
            cache=CacheConfig(kv_cache_memory_bytes=(3 << 20) + 5, kv_cache_dtype="bf16"),
            scheduler=SchedulerConfig(max_num_batched_tokens=48),
        ),
        ServerConfig(model_names=("x",), api_key="k", max_body_bytes=1 << 20),
    )
    argv = flags.to_argv(original)
    assert "--no-fused-decode" in argv and "--kv-cache-memory=3145733B" in argv
    assert "--max-body-bytes=1MiB" in argv
    assert _parse(ServeConfig, argv) == original
    assert flags.to_argv(ServeConfig(EngineConfig(num_threads=2))) == ["--num-threads=2"]


def test_prefixed_and_renamed_settings_keep_their_flags():
    names = {s.name for s in flags.settings(RouterConfig)}
    assert {"policy", "prefix_block_chars", "prefix_index_blocks", "eject_cooldown"} <= names
    scale = {s.name for s in flags.settings(AutoscaleConfig, "scale_")}
    assert {"min_replicas", "scale_up_queue_len", "scale_cooldown"} <= scale
    gateway = {s.name for s in flags.settings(GatewayConfig)}
    assert {"db", "upstream", "upstream_api_key", "limits", "max_streams_per_key"} <= gateway
    router = _parse(RouterConfig, ["--policy", "session", "--session-header", "X-Conv"])
    assert isinstance(router, RouterConfig)
    assert router.policy.name == "session" and router.proxy.session_header == "x-conv"


def test_mapping_parses_text_and_refuses_unknown_or_bad_values():
    config = flags.from_mapping(
        ServeConfig, {"kv-cache-memory": "1GiB", "max_num_seqs": 32, "fused_decode": "false"}
    )
    assert config.engine.cache.kv_cache_memory_bytes == 1 << 30
    assert config.engine.scheduler.max_num_seqs == 32 and not config.engine.fused_decode
    base = dataclasses.replace(config, server=ServerConfig(api_key="k"))
    assert flags.from_mapping(ServeConfig, {"seed": 3}, base=base).server.api_key == "k"
    with pytest.raises(KeyError, match="max_num_seq"):
        flags.from_mapping(ServeConfig, {"max_num_seq": 1})
    with pytest.raises(flags.ConfigError, match="not a size"):
        flags.from_mapping(ServeConfig, {"kv_cache_memory": "a lot"})
    with pytest.raises(flags.ConfigError, match="positive"):
        flags.from_mapping(ServeConfig, {"max_num_seqs": 0})


def test_argv_values_that_look_like_flags_survive_the_round_trip():
    config = ServeConfig(server=ServerConfig(api_key="-starts-with-a-dash"))
    assert _parse(ServeConfig, flags.to_argv(config)) == config
    with pytest.raises(flags.ConfigError, match="may not start with"):
        flags.to_argv(ServeConfig(server=ServerConfig(model_names=("-x",))))


def test_mapping_numbers_mean_what_the_flag_means_and_types_are_checked():
    assert flags.from_mapping(ServeConfig, {"kv_cache_memory": 4}).engine.cache == CacheConfig(
        kv_cache_memory_bytes=4 << 30
    )
    with pytest.raises(flags.ConfigError, match="expected int"):
        flags.from_mapping(ServeConfig, {"max_num_seqs": 64.5})
    with pytest.raises(flags.ConfigError, match="expected str"):
        flags.from_mapping(ServeConfig, {"model": 3})
    assert flags.from_mapping(ServeConfig, {"request_timeout": 5}).server.request_timeout_s == 5.0


def test_server_settings_are_checked():
    for bad in ({"keep_alive": "0"}, {"served_model_name": []}, {"max_queue_len": -1}):
        with pytest.raises(flags.ConfigError):
            flags.from_mapping(ServeConfig, bad)


def test_sizes_parse_and_format_exactly():
    assert flags.parse_bytes("2GiB") == 2 << 30 and flags.parse_bytes("4") == 4 << 30
    assert flags.parse_bytes("512MiB") == 512 << 20 and flags.parse_bytes("100B") == 100
    for n in (1, 1000, 1 << 10, 5 << 20, (1 << 30) + 1):
        assert flags.parse_bytes(flags.format_bytes(n)) == n
    assert flags.parse_count("100M") == 1e8
    with pytest.raises(ValueError):
        flags.parse_bytes("12 parsecs")


def test_policy_names_are_the_registry():
    assert set(POLICY_NAMES) == set(POLICIES)


def test_the_served_name_comes_from_the_model_unless_given(tmp_path):
    from chatfleet.modelfile.paths import served_model_name

    hf_dir = tmp_path / "Qwen2.5-0.5B-Instruct"
    hf_dir.mkdir()
    assert served_model_name(None) == "SmolLM2-135M-Instruct"
    assert served_model_name(str(hf_dir) + "/") == "Qwen2.5-0.5B-Instruct"
    assert served_model_name("/m/Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf") == (
        "Meta-Llama-3.1-8B-Instruct"
    )
    assert served_model_name("/m/SmolLM2-135M-Instruct.Q4_1.gguf") == "SmolLM2-135M-Instruct"
    assert served_model_name("/m/tiny.gguf") == "tiny"
    assert ServerConfig().for_model(str(hf_dir)).names == ("Qwen2.5-0.5B-Instruct",)
    assert ServerConfig(model_names=("a",)).for_model(str(hf_dir)).names == ("a",)
