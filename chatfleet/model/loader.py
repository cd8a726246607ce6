"""Model files -> (ModelConfig, LazyWeights): a GGUF file (gguf_weights.py) or a HF
directory (hf_weights.py), its architecture checked against `architectures.py`, its tensors
under the canonical names of lazy_weights.py, read when the model builds."""

from __future__ import annotations

import os

from chatfleet.config.engine_config import ModelConfig
from chatfleet.model.gguf_weights import load_gguf
from chatfleet.model.hf_weights import load_hf_dir
from chatfleet.model.lazy_weights import LazyWeights
from chatfleet.modelfile.paths import resolve_model_path


def load_weights(model: str | None) -> tuple[ModelConfig, LazyWeights]:
    """Read a GGUF file or a HF directory (config.json + *.safetensors): its config now (and
    every check on its tensors' names and types), its tensors when asked for."""
    path = resolve_model_path(model)
    if os.path.isdir(path):
        return load_hf_dir(path)
    return load_gguf(path)
