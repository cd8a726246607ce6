"""chatfleet: serve a chat LLM from the browser down to the KV cache."""

from chatfleet.entrypoints.llm import LLM
from chatfleet.outputs import CompletionOutput, RequestOutput
from chatfleet.sampling_params import SamplingParams

__all__ = ["LLM", "CompletionOutput", "RequestOutput", "SamplingParams"]
