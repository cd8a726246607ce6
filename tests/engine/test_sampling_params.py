"""Invalid parameters raise a typed error naming the field."""

from __future__ import annotations

import pytest

from chatfleet import SamplingParams
from chatfleet.errors import ContextLengthExceededError, InvalidRequestError


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"temperature": -0.5}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"top_k": -3}, "top_k"),
        ({"min_p": 2.0}, "min_p"),
        ({"presence_penalty": 3.0}, "presence_penalty"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"n": 0}, "n"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"logprobs": 50}, "logprobs"),
        ({"seed": -1}, "seed"),
    ],
)
def test_invalid_sampling_params(kwargs, field):
    with pytest.raises(InvalidRequestError) as info:
        SamplingParams(**kwargs)
    assert info.value.param == field


def test_unknown_stop_token_ids_rejected_by_engine(llm):
    with pytest.raises(InvalidRequestError) as info:
        llm.generate("hi", SamplingParams(stop_token_ids=[10**7]))
    assert info.value.param == "stop_token_ids"


def test_prompt_longer_than_context(llm):
    too_long = [42] * (llm.engine.max_model_len + 1)
    with pytest.raises(ContextLengthExceededError) as info:
        llm.generate(too_long, SamplingParams(max_tokens=1))
    assert info.value.code == "context_length_exceeded" and info.value.param == "prompt"


def test_max_tokens_past_context(llm):
    with pytest.raises(ContextLengthExceededError) as info:
        llm.generate("hi", SamplingParams(max_tokens=10**9))
    assert info.value.param == "max_tokens"
    assert not llm.engine.has_unfinished_requests()
