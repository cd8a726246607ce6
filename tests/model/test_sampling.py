"""Sampling parameters end to end on the real model."""

from __future__ import annotations

import math

import pytest
import torch

from chatfleet import SamplingParams
from chatfleet.model.sampler import apply_bitmasks, apply_truncation

PROMPT = "Once upon a time in a small village,"


def test_seeded_sampling_is_reproducible_whatever_the_batch(llm):
    seeded = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=24, ignore_eos=True)
    alone = llm.generate(PROMPT, seeded)[0].outputs[0].token_ids
    others = SamplingParams(temperature=1.2, max_tokens=30, ignore_eos=True)
    batch = llm.generate(["Hello", PROMPT, "Tell me a joke"], [others, seeded, others])
    assert batch[1].outputs[0].token_ids == alone
    other_seed = SamplingParams(temperature=1.0, top_p=0.9, seed=99, max_tokens=24, ignore_eos=True)
    assert llm.generate(PROMPT, other_seed)[0].outputs[0].token_ids != alone


def test_top_k_one_is_greedy(llm):
    greedy = llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=16))[0]
    topk1 = llm.generate(PROMPT, SamplingParams(temperature=0.8, top_k=1, max_tokens=16))[0]
    assert greedy.outputs[0].token_ids == topk1.outputs[0].token_ids


def test_truncation_masks():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]] * 3))
    params = [SamplingParams(top_k=2), SamplingParams(top_p=0.7), SamplingParams(min_p=0.4)]
    kept = torch.isfinite(apply_truncation(logits, params))
    assert kept.tolist() == [
        [True, True, False, False],  # top_k 2
        [True, True, False, False],  # 0.5 < 0.7 so the second token is needed too
        [True, True, False, False],  # min_p 0.4 * 0.5 = 0.2 > 0.15
    ]


@pytest.mark.parametrize("penalty", [{"frequency_penalty": 2.0}, {"repetition_penalty": 1.8}])
def test_penalties_reduce_repetition(llm, penalty):
    prompt = "Repeat after me: cat cat cat cat cat cat cat cat"
    plain = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=32, ignore_eos=True))
    penalized = llm.generate(
        prompt, SamplingParams(temperature=0, max_tokens=32, ignore_eos=True, **penalty)
    )
    assert len(set(penalized[0].outputs[0].token_ids)) > len(set(plain[0].outputs[0].token_ids))


def test_logprobs_are_normalised_and_ranked(llm):
    out = llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=8, logprobs=5))[0]
    comp = out.outputs[0]
    assert len(comp.logprobs) == len(comp.token_ids)
    for token, lp in zip(comp.token_ids, comp.logprobs, strict=True):
        assert lp.token_id == token and len(lp.top) == 5
        assert lp.top[0][0] == token  # greedy picks the best
        values = [v for _, v in lp.top]
        assert values == sorted(values, reverse=True)
        assert sum(math.exp(v) for v in values) <= 1.0 + 1e-4


def test_n_choices_share_prompt_blocks(llm):
    prefix = " ".join(["The quick brown fox jumps over the lazy dog."] * 12)
    params = SamplingParams(n=4, temperature=1.0, seed=7, max_tokens=8, ignore_eos=True)
    queries_before = llm.engine.kv_cache_manager.stats.hits
    out = llm.generate(prefix, params)[0]
    assert len(out.outputs) == 4 and [c.index for c in out.outputs] == [0, 1, 2, 3]
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1  # different seeds per choice
    full_blocks = (out.num_prompt_tokens - 1) // 16
    # Choices 1..3 reuse choice 0's full prompt blocks (registered when allocated).
    assert llm.engine.kv_cache_manager.stats.hits - queries_before >= 3 * full_blocks * 16


def test_stop_strings_and_stop_reason(llm):
    base = llm.generate("Count: 1, 2, 3,", SamplingParams(temperature=0, max_tokens=20))[0]
    text = base.outputs[0].text
    stop = text[4:7]
    assert stop.strip(), f"need a non-blank stop string from {text!r}"
    out = llm.generate(
        "Count: 1, 2, 3,", SamplingParams(temperature=0, max_tokens=20, stop=[stop])
    )[0].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert out.text == text[: text.index(stop)]
    kept = llm.generate(
        "Count: 1, 2, 3,",
        SamplingParams(temperature=0, max_tokens=20, stop=[stop], include_stop_str_in_output=True),
    )
    assert kept[0].outputs[0].text == text[: text.index(stop) + len(stop)]


def test_max_tokens_finish_reason_length_and_min_tokens(llm):
    out = llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=5))[0].outputs[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 5
    eos = llm.engine.eos_token_ids
    chat = llm.tokenizer.apply_chat_template([{"role": "user", "content": "Say hi."}])
    short = llm.generate(chat, SamplingParams(temperature=0, max_tokens=200))[0].outputs[0]
    assert short.finish_reason == "stop"
    forced = llm.generate(
        chat, SamplingParams(temperature=0, max_tokens=200, min_tokens=len(short.token_ids) + 5)
    )[0].outputs[0]
    assert len(forced.token_ids) >= len(short.token_ids) + 5
    assert not set(forced.token_ids[: len(short.token_ids) + 4]) & set(eos)


def test_grammar_bitmasks_forbid_exactly_the_clear_bits_of_their_rows():
    """Against unpacking every bit: rows named by idx get -inf where their bit is clear, an
    all-set row and the rows without a mask are untouched."""
    vocab = 1000  # not a multiple of 32: the last word's spare bits are ignored
    gen = torch.Generator().manual_seed(0)
    masks = torch.randint(-(2**31), 2**31 - 1, (3, (vocab + 31) // 32), generator=gen)
    masks = masks.to(torch.int32)
    masks[1] = -1
    logits = torch.randn(5, vocab, generator=gen)
    out = logits.clone()
    apply_bitmasks(out, [0, 2, 3], masks)
    bits = torch.arange(32, dtype=torch.int32)
    allowed = ((masks.unsqueeze(-1) >> bits) & 1).bool().flatten(1)[:, :vocab]
    expected = logits.clone()
    expected[[0, 3]] = expected[[0, 3]].masked_fill(~allowed[[0, 2]], float("-inf"))
    assert torch.equal(out, expected)
