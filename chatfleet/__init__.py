"""chatfleet: serve a chat LLM from the browser down to the KV cache."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from chatfleet.outputs import CompletionOutput, RequestOutput
from chatfleet.sampling_params import SamplingParams

# NOTE: set before anything imports torch (libgomp reads it once, as it loads). After a
# parallel region an OpenMP worker spins for 300,000 rounds by default, holding a core: the
# event loop, the tokenizer and a local client, which run between two decode steps, then wait
# for it, and so does the engine thread that hands them a streamed token. With 20,000 rounds
# the worker sleeps sooner; within a step, the parallel regions follow each other more closely.
# A value the user set is kept; USER_GOMP_SPINCOUNT is what the user's environment said (None:
# unset), for tools that start other programs as the user would.
USER_GOMP_SPINCOUNT = os.environ.get("GOMP_SPINCOUNT")
os.environ.setdefault("GOMP_SPINCOUNT", "20000")

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
