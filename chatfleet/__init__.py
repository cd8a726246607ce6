"""chatfleet: serve a chat LLM from the browser down to the KV cache."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chatfleet.outputs import CompletionOutput, RequestOutput
from chatfleet.sampling_params import SamplingParams

if TYPE_CHECKING:
    from chatfleet.llm import LLM

__all__ = ["LLM", "CompletionOutput", "RequestOutput", "SamplingParams"]


def __getattr__(name: str) -> Any:
    # NOTE: LLM is imported on first use: it pulls in torch, which the router, the CLI's
    # argument parsing and the load generator do not need.
    if name == "LLM":
        from chatfleet.llm import LLM

        return LLM
    raise AttributeError(f"module 'chatfleet' has no attribute {name!r}")
