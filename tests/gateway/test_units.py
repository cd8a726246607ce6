"""Pure parts of the gateway, no servers: keys, GCRA, the in-process limit store, the
limiter's admission, prompt trimming, SSE chunk parsing."""

from __future__ import annotations

import asyncio

import pytest

from chatfleet.config.gateway_config import LimitsConfig
from chatfleet.errors import ContextLengthExceededError
from chatfleet.gateway import keys
from chatfleet.gateway.limiter import Limiter, RateLimitError
from chatfleet.gateway.limits.base import PERIOD_S, KeyLimits, gcra, gcra_adjust, remaining
from chatfleet.gateway.limits.memory import MemoryRateLimitStore
from chatfleet.gateway.prompt import CharTokenCounter, TemplateTokenCounter, Turn, plan_prompt
from chatfleet.gateway.store.base import ApiKey
from chatfleet.gateway.upstream import parse_chat_chunk


def test_key_round_trip_and_junk():
    made = keys.new_key()
    key_id, secret = keys.parse_key(made.plain)
    assert key_id == made.key_id
    assert keys.verify_secret(secret, made.salt, made.secret_hash)
    assert not keys.verify_secret(secret + "x", made.salt, made.secret_hash)
    assert made.plain not in made.secret_hash and secret not in made.secret_hash
    for junk in [
        "",
        "Bearer",
        "cf_",
        "cf_xyz_abc",
        "sk_0123456789abcdef_x",
        "cf_0123456789abcdeg_x",
    ]:
        assert keys.parse_key(junk) is None


def test_gcra_allows_a_minute_of_burst_then_spaces_requests():
    tat = None
    for _ in range(5):
        step = gcra(tat, 100.0, 5, 1)
        assert step.is_allowed
        tat = step.tat
    refused = gcra(tat, 100.0, 5, 1)
    assert not refused.is_allowed and refused.retry_after_s == pytest.approx(PERIOD_S / 5)
    assert refused.tat == tat  # a refusal takes nothing
    assert gcra(tat, 100.0 + PERIOD_S / 5, 5, 1).is_allowed  # one interval later: one more
    assert remaining(tat, 100.0, 5) == 0 and remaining(tat, 100.0 + PERIOD_S, 5) == 5


def test_gcra_refund_never_goes_past_a_full_bucket_and_charges_make_debt():
    now = 10.0
    tat = gcra(None, now, 1000, 600).tat  # 600 of 1000 tokens taken
    assert remaining(tat, now, 1000) == 400
    tat = gcra_adjust(tat, now, 1000, -500)  # 100 were used
    assert remaining(tat, now, 1000) == 900
    assert gcra_adjust(tat, now, 1000, -5000) == now  # full, not fuller
    debt = gcra_adjust(now, now, 1000, 1500)  # used more than the whole minute
    assert not gcra(debt, now, 1000, 1).is_allowed


def _key(**limits) -> ApiKey:
    values = {"rpm": None, "tpm": None, "max_streams": None, **limits}
    return ApiKey("k1", "u1", "alice", False, "", "s", "h", **values, created_at=0, revoked_at=None)


def test_limiter_reserves_refunds_and_caps_streams():
    async def main() -> None:
        limiter = Limiter(MemoryRateLimitStore(), LimitsConfig())
        key = _key(rpm=100, tpm=1000, max_streams=1)
        first = await limiter.admit(key, 800, is_stream=True)
        assert first.headers["x-ratelimit-remaining-tokens"] == "200"
        with pytest.raises(RateLimitError) as e:
            await limiter.admit(key, 300, is_stream=False)
        assert e.value.type == "tokens" and int(e.value.headers["Retry-After"]) >= 1
        with pytest.raises(RateLimitError) as e:
            await limiter.admit(key, 10, is_stream=True)
        assert e.value.type == "streams"
        await first.settle(100)  # 700 unused tokens come back
        await first.release()
        again = await limiter.admit(key, 800, is_stream=True)
        assert int(again.headers["x-ratelimit-remaining-tokens"]) >= 100
        with pytest.raises(RateLimitError, match="Request too large"):
            await limiter.admit(key, 5000, is_stream=False)

    asyncio.run(main())


def _turns(n: int, words: int = 40) -> list[Turn]:
    out = []
    for i in range(n):
        role = "user" if i % 2 == 0 else "assistant"
        out.append(Turn(i + 1, role, f"turn {i} " + "word " * words))
    return out + [Turn(10**9, "user", "the new question")]


def test_plan_keeps_everything_that_fits():
    plan = plan_prompt(CharTokenCounter(), "be brief", _turns(4), 10_000, 100)
    assert plan.num_dropped == 0 and plan.context_start == 1 and plan.max_tokens == 100
    assert plan.messages[0] == {"role": "system", "content": "be brief"}
    assert len(plan.messages) == 6


def test_plan_drops_whole_oldest_turns_with_slack_and_keeps_the_cut_point():
    counter = CharTokenCounter()
    turns = _turns(40)
    plan = plan_prompt(counter, "sys", turns, 2000, 200, slack=300)
    assert plan.num_dropped > 0 and plan.num_dropped % 2 == 0  # whole user+assistant turns
    assert plan.messages[0]["role"] == "system" and plan.messages[1]["role"] == "user"
    assert plan.messages[-1]["content"] == "the new question"
    assert plan.num_prompt_tokens <= 2000 - 200 - 300
    # The next turn keeps the same first message while it fits: a stable prefix.
    more = turns[:-1] + [Turn(41, "assistant", "a short answer"), Turn(10**9, "user", "next")]
    again = plan_prompt(counter, "sys", more, 2000, 200, plan.context_start, slack=300)
    assert again.context_start == plan.context_start
    assert again.messages[:3] == plan.messages[:3]


def test_plan_shrinks_the_reply_then_refuses_a_message_that_cannot_fit():
    counter = CharTokenCounter()
    big = [Turn(1, "user", "x" * 1500)]  # ~500 tokens
    plan = plan_prompt(counter, "", big, 600, 400)
    assert plan.max_tokens == 600 - plan.num_prompt_tokens
    with pytest.raises(ContextLengthExceededError):
        plan_prompt(counter, "", [Turn(1, "user", "x" * 3000)], 600, 400)


def test_plan_counts_with_the_models_chat_template():
    counter = TemplateTokenCounter(None)
    n = counter.count_chat([{"role": "user", "content": "Hello there"}])
    assert n > counter.count_text("Hello there")  # the template adds role markers
    plan = plan_prompt(counter, "", _turns(60, words=30), 1024, 128, slack=128)
    assert 0 < plan.num_prompt_tokens <= 1024 - 128 - 128
    assert plan.num_prompt_tokens == counter.count_chat(plan.messages)


def test_chat_chunk_parsing():
    chunk = parse_chat_chunk(
        '{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}'
    )
    assert chunk.text == "Hi" and chunk.finish_reason is None and chunk.error is None
    usage = parse_chat_chunk(
        '{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,'
        '"prompt_tokens_details":{"cached_tokens":4}}}'
    ).usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == (9, 2, 4)
    assert parse_chat_chunk('{"error":{"message":"boom"}}').error == "boom"
    assert parse_chat_chunk("not json").error is not None
    assert KeyLimits(1, 1, 1).rpm == 1
