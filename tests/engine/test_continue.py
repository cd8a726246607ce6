"""A reply continued from its first tokens (SamplingParams.continue_token_ids, what the router
sends when a stream's replica died) is the reply an undisturbed run gives: the same tokens
greedy or seeded, a stop string across the seam caught, the whole reply in the output."""

from __future__ import annotations

import pytest

from chatfleet import SamplingParams
from chatfleet.errors import InvalidRequestError
from chatfleet.sampling_params import Grammar
from chatfleet.structured.grammars import json_object_grammar

PROMPT = "Write a short poem about the sea."
SEAM = 20  # tokens made before the seam


def _continued(llm, params: SamplingParams, ids: list[int]):
    cont = SamplingParams(**{**params.__dict__, "continue_token_ids": ids[:SEAM]})
    return llm.generate(PROMPT, cont)[0].outputs[0]


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0, max_tokens=48, ignore_eos=True),
        SamplingParams(temperature=0.8, seed=1234, max_tokens=48, ignore_eos=True),
        SamplingParams(temperature=0.8, seed=7, top_p=0.9, max_tokens=48, ignore_eos=True),
    ],
    ids=["greedy", "seeded", "seeded-top-p"],
)
def test_a_continued_reply_is_the_undisturbed_one(llm, params):
    whole = llm.generate(PROMPT, params)[0].outputs[0]
    continued = _continued(llm, params, whole.token_ids)
    assert continued.token_ids == whole.token_ids  # the continued ones, then the rest
    assert continued.text == whole.text
    assert continued.finish_reason == whole.finish_reason == "length"  # max_tokens counts all


def test_a_stop_string_across_the_seam_is_caught(llm):
    params = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)
    whole = llm.generate(PROMPT, params)[0].outputs[0]
    before = llm.tokenizer.decode(whole.token_ids[:SEAM])
    after = llm.tokenizer.decode(whole.token_ids[: SEAM + 1])
    assert after.startswith(before) and len(after) > len(before)
    stop = before[-2:] + after[len(before) : len(before) + 2]  # half each side of the seam
    with_stop = SamplingParams(**{**params.__dict__, "stop": [stop]})
    expected = llm.generate(PROMPT, with_stop)[0].outputs[0]
    assert expected.finish_reason == "stop"
    continued = _continued(llm, with_stop, whole.token_ids)
    assert continued.finish_reason == "stop" and continued.stop_reason == stop
    assert continued.text == expected.text


def test_continued_tokens_a_reply_could_not_have_made_are_refused(llm):
    """Tokens its grammar does not allow, or that already end at one of its stop strings,
    cannot be a reply's start: the engine refuses them rather than go on after them."""
    ids = llm.tokenizer.encode("Hello there")
    as_json = Grammar(json_object_grammar(), "response_format")
    with pytest.raises(InvalidRequestError, match="the grammar does not allow them"):
        llm.generate(PROMPT, SamplingParams(max_tokens=8, grammar=as_json, continue_token_ids=ids))
    stopped = SamplingParams(max_tokens=8, stop=["there"], continue_token_ids=ids)
    with pytest.raises(InvalidRequestError, match="already end at the stop string 'there'"):
        llm.generate(PROMPT, stopped)


def test_continued_tokens_are_checked(llm):
    with pytest.raises(InvalidRequestError, match="continue_token_ids"):
        SamplingParams(max_tokens=4, continue_token_ids=[1, 2, 3, 4])  # no room left
    with pytest.raises(InvalidRequestError, match="continue_token_ids"):
        SamplingParams(n=2, max_tokens=8, continue_token_ids=[1])
    with pytest.raises(InvalidRequestError, match="unknown token ids"):
        llm.generate(PROMPT, SamplingParams(max_tokens=8, continue_token_ids=[10**9]))


def test_a_continued_reply_counts_only_prompt_tokens_as_cached(llm):
    """The continued tokens are output, not prompt: a cache hit on them (the undisturbed run
    left them in the prefix cache) is not reported as cached prompt tokens."""
    params = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)
    whole = llm.generate(PROMPT, params)[0]
    cont = SamplingParams(
        **{**params.__dict__, "continue_token_ids": whole.outputs[0].token_ids[:40]}
    )
    continued = llm.generate(PROMPT, cont)[0]
    assert continued.num_prompt_tokens == whole.num_prompt_tokens
    assert continued.num_cached_tokens <= continued.num_prompt_tokens
