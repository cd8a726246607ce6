"""The router's prefix index: chained block hashes, leading-block matches, LRU bound."""

from __future__ import annotations

from chatfleet.config.router_config import PrefixConfig
from chatfleet.router.prefix_index import PrefixIndex, block_hashes, prompt_text

CONFIG = PrefixConfig(block_chars=8)


def chat(*messages: tuple[str, str]) -> dict:
    return {"messages": [{"role": r, "content": c} for r, c in messages]}


def test_prompt_text_reads_chat_and_completion_bodies():
    body = chat(("system", "be brief"), ("user", [{"type": "text", "text": "hi"}]))
    assert prompt_text(body) == "system:be brief\x1euser:hi"
    assert prompt_text({"prompt": "once upon"}) == "once upon"
    assert prompt_text({"prompt": [1, 2, 3]}) == "1\x1e2\x1e3"
    assert prompt_text(None) == prompt_text({"messages": "nope"}) == ""


def test_a_longer_conversation_extends_the_earlier_hashes():
    system = ("system", "You answer questions about ships and the sea. " * 3)
    turn1 = chat(system, ("user", "What is a keel?"))
    turn2 = chat(system, ("user", "What is a keel?"), ("assistant", "The spine."), ("user", "Why?"))
    h1, h2 = (block_hashes(prompt_text(b), CONFIG) for b in (turn1, turn2))
    assert len(h1) == len(prompt_text(turn1)) // 8 and h2[: len(h1)] == h1
    other = block_hashes(prompt_text(chat(("system", "Other."), ("user", "x" * 40))), CONFIG)
    assert other[0] != h1[0]


def test_block_hashes_are_bounded_per_request():
    config = PrefixConfig(block_chars=4, max_blocks_per_request=3)
    assert len(block_hashes("x" * 100, config)) == 3
    assert block_hashes("abc", config) == []


def test_match_counts_leading_blocks_per_replica():
    index = PrefixIndex(max_blocks_per_replica=100)
    index.insert([1, 2, 3, 4], "a")
    index.insert([1, 2, 9], "b")
    assert dict(index.match([1, 2, 3, 4, 5])) == {"a": 4, "b": 2}
    assert dict(index.match([1, 2, 9, 4])) == {"a": 2, "b": 3}  # a's 4 follows a gap
    assert dict(index.match([7, 1, 2])) == {}
    index.check_integrity()


def test_each_replica_evicts_its_own_least_recent_blocks_tail_first():
    index = PrefixIndex(max_blocks_per_replica=4)
    index.insert([1, 2, 3], "a")
    index.insert([10, 20, 30], "b")  # b's blocks do not push out a's
    index.insert([1, 5], "a")  # 4 blocks for a: still all there
    assert dict(index.match([1, 2, 3])) == {"a": 3}
    index.insert([7, 8], "a")  # over a's bound: its oldest, the tail 3 and then 2, go
    assert dict(index.match([1, 2, 3])) == {"a": 1}
    assert dict(index.match([10, 20, 30])) == {"b": 3}
    index.check_integrity()


def test_forget_replica_drops_only_its_entries():
    index = PrefixIndex(max_blocks_per_replica=100)
    index.insert([1, 2], "a")
    index.insert([1, 3], "b")
    index.forget_replica("a")
    assert dict(index.match([1, 2])) == {"b": 1}
    assert len(index) == 2
    index.check_integrity()
