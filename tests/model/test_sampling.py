"""Sampling parameters end to end on the real model."""

from __future__ import annotations

import math

import pytest
import torch

from chatfleet import SamplingParams
from chatfleet.model.sampler import (
    Sampler,
    SamplingRow,
    apply_bitmasks,
    apply_truncation,
    argmax_rows,
    sample_inverse_cdf,
)

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


def test_inverse_cdf_sampling_follows_the_distribution_and_never_picks_a_masked_token():
    probs = torch.tensor([0.5, 0.0, 0.3, 0.2, 0.0]).repeat(20_000, 1)
    uniforms = torch.rand(20_000, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    counts = torch.bincount(sample_inverse_cdf(probs, uniforms), minlength=5) / 20_000
    assert counts[1] == 0 and counts[4] == 0
    assert torch.allclose(counts, probs[0], atol=0.015), counts
    # The edges: the smallest and the largest uniform below 1 land on real tokens.
    edges = torch.tensor([0.0, torch.nextafter(torch.tensor(1.0), torch.tensor(0.0)).item()])
    assert sample_inverse_cdf(probs[:2], edges.double()).tolist() == [0, 3]


def test_a_seeded_row_draws_one_number_per_sampled_token():
    """What a resumed seeded stream relies on: after n tokens its generator is where n
    uniform draws leave a fresh one (a race over the vocabulary drew one number per token id)."""
    params = SamplingParams(temperature=0.8, seed=5, max_tokens=8)
    generator = torch.Generator().manual_seed(5)
    row = SamplingRow(params, [1], [], generator, [])
    logits = torch.randn(4, 1000, generator=torch.Generator().manual_seed(0))
    sampler = Sampler()
    for _ in range(6):
        sampler(logits[:1].clone(), [row], torch.Generator())
    expected = torch.Generator().manual_seed(5)
    for _ in range(6):
        torch.rand(1, dtype=torch.float64, generator=expected)
    assert torch.equal(generator.get_state(), expected.get_state())


class _AllowOnly:
    """A grammar allowing a fixed set of token ids; counts the masks asked of it."""

    def __init__(self, allowed: set[int], vocab: int) -> None:
        self.allowed, self.vocab, self.num_masks = allowed, vocab, 0

    def allows(self, token_id: int) -> bool:
        return token_id in self.allowed

    def bitmask(self) -> torch.Tensor:
        self.num_masks += 1
        bits = torch.zeros((self.vocab + 31) // 32 * 32, dtype=torch.int64)
        bits[list(self.allowed)] = 1
        words = (bits.view(-1, 32) << torch.arange(32)).sum(1)
        return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def test_a_grammar_checked_after_sampling_masks_only_refused_draws_and_keeps_the_distribution():
    """Rows without truncation sample first and ask the grammar after: an allowed draw costs
    no mask; a refused one is drawn again from the masked distribution, so every token comes
    with its masked probability."""
    vocab = 64
    logits = torch.full((1, vocab), -5.0)
    logits[0, [3, 5, 7]] = torch.tensor([2.0, 3.0, 1.0])
    greedy = SamplingParams(temperature=0, max_tokens=1)
    liked = _AllowOnly({5, 7}, vocab)
    out = Sampler()(logits.clone(), [SamplingRow(greedy, [1], [], None, [], grammar=liked)], None)
    assert out.token_ids == [5] and liked.num_masks == 0
    refused = _AllowOnly({3, 7}, vocab)
    out = Sampler()(logits.clone(), [SamplingRow(greedy, [1], [], None, [], grammar=refused)], None)
    assert out.token_ids == [3] and refused.num_masks == 1

    sampled = SamplingParams(temperature=1.0, max_tokens=1)
    grammar = _AllowOnly({3, 7}, vocab)
    generator = torch.Generator().manual_seed(3)
    rows = [SamplingRow(sampled, [1], [], None, [], grammar=grammar) for _ in range(4000)]
    tokens = Sampler()(logits.repeat(4000, 1), rows, generator).token_ids
    assert set(tokens) <= {3, 7}
    expected = torch.tensor([2.0, 1.0]).softmax(0)[0].item()  # P(3) among {3, 7}
    assert abs(tokens.count(3) / 4000 - expected) < 0.03
    p_refused = 1 - logits[0].softmax(0)[[3, 7]].sum().item()  # masks only for refused draws
    assert abs(grammar.num_masks / 4000 - p_refused) < 0.03


def test_greedy_takes_the_first_of_equal_largest_logits_in_any_row_order():
    """The CPU's argmax (numpy's) picks what torch's does: the first of tied maxima, for all
    rows in order or any subset; masked (-inf) entries are never picked over a finite one."""
    logits = torch.randn(5, 1000, generator=torch.Generator().manual_seed(0))
    logits[1, [3, 700]] = 50.0
    logits[2, :990] = float("-inf")
    assert argmax_rows(logits, [1]) == [3]
    assert argmax_rows(logits, [2])[0] >= 990
    for rows in ([0, 1, 2, 3, 4], [4, 1, 2], [3]):
        assert argmax_rows(logits, rows) == logits[rows].argmax(dim=-1).tolist()


def test_whole_number_sampling_parameters_sample_as_floats():
    """A JSON body's `"temperature": 1` or `"top_p": 1` arrives as an int; the draw takes it as
    the float it means (the sampling kernel checks its inputs' types, and a failed check fails
    the step, which stops the engine)."""
    params = SamplingParams(temperature=1, top_p=1, top_k=0, max_tokens=1, seed=2)
    logits = torch.randn(2, 500, generator=torch.Generator().manual_seed(0))
    rows = [SamplingRow(params, [1], [], torch.Generator().manual_seed(2), [])] * 2
    tokens = Sampler()(logits, rows, torch.Generator()).token_ids
    assert len(tokens) == 2 and all(0 <= t < 500 for t in tokens)
