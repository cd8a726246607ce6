"""A conversation longer than the context: the oldest turns are left out of the prompt (all
of them stay stored), the reply still streams, and the cut point stays put so the next turn
hits the engine's prefix cache."""

from __future__ import annotations

from chatfleet.gateway.store import open_store
from chatfleet.gateway.store.base import ReplyEnd
from tests.gateway.conftest import get_conversation, make_key, say

MAX_MODEL_LEN, REPLY = 512, 32


def _seed_long_history(db_url: str, user: str, num_turns: int) -> str:
    """A conversation with `num_turns` stored user/assistant turns (~60 tokens each)."""
    store = open_store(db_url)
    try:
        owner = store.get_user_by_name(user)
        conv = store.create_conversation(owner.user_id, title="long")
        for i in range(num_turns):
            question = f"Question {i}: tell me about the number {i} in a few words please."
            _, reply = store.start_reply(conv.conversation_id, question)
            answer = f"The number {i} is a number that comes after {i - 1} and before {i + 1}."
            store.finish_reply(reply.message_id, ReplyEnd("complete", answer, "stop"))
        return conv.conversation_id
    finally:
        store.close()


def test_long_conversation_is_trimmed_and_still_streams(gateway_factory, sqlite_url):
    key = make_key(sqlite_url, "alice")
    conv = _seed_long_history(sqlite_url, "alice", 40)  # ~2400 tokens of history
    gw = gateway_factory(
        sqlite_url,
        *("--max-model-len", str(MAX_MODEL_LEN), "--reply-max-tokens", str(REPLY)),
        *("--trim-slack-tokens", "96"),
    )
    first = say(gw.base_url, key, conv, "What was the first question?", max_tokens=REPLY)
    assert first.status == 200
    assert first.events[0]["context"]["num_dropped_messages"] > 40
    assert any(e["type"] == "delta" for e in first.events)
    end = first.end["message"]
    assert end["status"] == "complete"
    usage = end["usage"]  # the engine's exact count of what was sent
    assert 0 < usage["prompt_tokens"] <= MAX_MODEL_LEN - REPLY - 96
    messages = get_conversation(gw.base_url, key, conv).json()["messages"]
    assert len(messages) == 82  # nothing was deleted

    second = say(gw.base_url, key, conv, "And the last one?", max_tokens=REPLY)
    assert second.end["message"]["status"] == "complete"
    assert (
        second.events[0]["context"]["num_dropped_messages"]
        == (first.events[0]["context"]["num_dropped_messages"])
    )
    # Same kept prefix as the first turn, so the replica's prefix cache served most of it.
    details = second.end["message"]["usage"]["prompt_tokens_details"]
    assert details["cached_tokens"] >= usage["prompt_tokens"] // 2
