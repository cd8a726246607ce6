"""`--model org/name`: a Hugging Face repo id resolved through the hub's local cache (laid out
here as `huggingface_hub` lays it out), served under its own name; a missing one is a clear
error that names the cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from chatfleet import LLM, SamplingParams
from chatfleet.config.engine_config import CacheConfig, SchedulerConfig
from chatfleet.config.server_config import ServerConfig
from chatfleet.entrypoints.cli import main
from chatfleet.modelfile.paths import default_model_path, resolve_model_path
from chatfleet.modelfile.tokenizer import Tokenizer

hub = pytest.importorskip("huggingface_hub")
transformers = pytest.importorskip("transformers")
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty hub cache, with fetching switched off (nothing may reach the network)."""
    monkeypatch.setattr(hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hub"


def snapshot(cache: Path, repo_id: str) -> Path:
    """An empty snapshot of `repo_id` at COMMIT, with `refs/main` pointing at it."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    path = repo / "snapshots" / COMMIT
    path.mkdir(parents=True)
    return path


def test_a_cached_hf_repo_loads_and_is_served_under_its_id(cache) -> None:
    path = snapshot(cache, "tiny-org/tiny-llama")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    Tokenizer.from_model_path(None).save_hf(str(path))
    assert resolve_model_path("tiny-org/tiny-llama") == str(path)
    assert ServerConfig().for_model("tiny-org/tiny-llama").names == ("tiny-org/tiny-llama",)
    llm = LLM(
        model="tiny-org/tiny-llama",
        weight_format="fp32",
        cache=CacheConfig(num_blocks_override=16, kv_cache_dtype="fp32"),
        scheduler=SchedulerConfig(max_num_seqs=2),
    )
    out = llm.generate("Hello", SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
    assert len(out[0].outputs[0].token_ids) == 4


def test_a_cached_gguf_repo_resolves_to_its_only_gguf_file(cache) -> None:
    path = snapshot(cache, "org/model-GGUF")
    os.symlink(default_model_path(), path / "model.Q4_1.gguf")
    assert resolve_model_path("org/model-GGUF") == str(path / "model.Q4_1.gguf")
    os.symlink(default_model_path(), path / "model.Q8_0.gguf")
    with pytest.raises(FileNotFoundError, match=r"several GGUF files .*give one of them"):
        resolve_model_path("org/model-GGUF")


def test_a_repo_not_in_the_cache_is_refused_with_the_cache_path(cache, capsys) -> None:
    assert main(["serve", "--model", "nobody/nothing", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert "error: model 'nobody/nothing' is not a path and not in the Hugging Face cache" in err
    assert str(cache) in err and "Traceback" not in err
