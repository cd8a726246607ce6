"""The accuracy check that gates a faster numeric path (bf16 matmuls, an int8 KV cache): the
same chat prompts through two engines, greedy, one of them the reference (fp32 weights or an
fp32 cache); how many tokens agree before the first difference, and how far apart the
logprobs of the tokens both chose are."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from chatfleet.sampling_params import SamplingParams

if TYPE_CHECKING:
    from chatfleet.llm import LLM

CHAT_PROMPTS = (
    "What is the capital of France?",
    "Name three primary colors.",
    "Write a haiku about the sea.",
    "Explain photosynthesis briefly.",
    "How do I sort a list in Python?",
    "What is 17 times 23?",
    "Give me a tip for better sleep.",
    "Who wrote Hamlet?",
)


@dataclass(frozen=True)
class Agreement:
    agreed_per_prompt: list[int]  # greedy tokens equal before the first difference
    max_logprob_diff: float  # over the tokens both chose

    @property
    def agreed(self) -> int:
        return sum(self.agreed_per_prompt)


def greedy_agreement(llm: LLM, reference: LLM, max_tokens: int) -> Agreement:
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, logprobs=1)
    chats = [[{"role": "user", "content": q}] for q in CHAT_PROMPTS]
    agreed, worst = [], 0.0
    for a, b in zip(llm.chat(chats, params), reference.chat(chats, params), strict=True):
        same = 0
        for got, want in zip(a.outputs[0].logprobs or [], b.outputs[0].logprobs or [], strict=True):
            if got.token_id != want.token_id:
                break
            same += 1
            worst = max(worst, abs(got.logprob - want.logprob))
        agreed.append(same)
    return Agreement(agreed, worst)
