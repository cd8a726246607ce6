"""Router-side prefix index: a bounded LRU guess of which replica caches which prompt prefix.

A prompt is reduced to text (chat messages in order, or the completion prompt), cut into
blocks of `block_chars` characters, and each full block gets a chained hash, so equal hashes
mean equal text from the start of the prompt:

    text:    |  block 0  |  block 1  |  block 2  | tail (not indexed)
    hashes:     h0 = H(0, b0)   h1 = H(h0, b1)   h2 = H(h1, b2)

The index maps each hash to the replicas that were sent a prompt starting that way. A
replica's match for a new prompt is the number of leading hashes it holds, without a gap.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from chatfleet.config.router_config import PrefixConfig
from chatfleet.router.snapshot import RouteRequest

_SEP = "\x1e"  # between messages; cannot be confused with text a user typed as a role marker


def prompt_text(body: Any) -> str:
    """The prompt of a /v1/chat/completions or /v1/completions body as one string, led by
    its cache salt if it has one (replicas share cached blocks only within a salt).

    Unknown shapes give "" (the request is then routed by load only; the replica validates it).
    """
    if not isinstance(body, dict):
        return ""
    salt = body.get("cache_salt")
    if isinstance(salt, str):
        return (
            f"salt:{salt}{_SEP}{prompt_text({k: v for k, v in body.items() if k != 'cache_salt'})}"
        )
    messages = body.get("messages")
    if isinstance(messages, list):
        parts = []
        for m in messages:
            if isinstance(m, dict):
                parts.append(f"{m.get('role')}:{_content_text(m.get('content'))}")
        return _SEP.join(parts)
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt:
        return _SEP.join(p if isinstance(p, str) else str(p) for p in prompt)
    return ""


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p
        )
    return ""


def block_hashes(text: str, config: PrefixConfig) -> list[int]:
    """Chained 64-bit hashes of the full blocks of `text` (at most max_blocks_per_request)."""
    n = min(len(text) // config.block_chars, config.max_blocks_per_request)
    hashes, parent = [], b"\0" * 8
    for i in range(n):
        chunk = text[i * config.block_chars : (i + 1) * config.block_chars]
        digest = hashlib.blake2b(parent + chunk.encode("utf-8", "surrogatepass"), digest_size=8)
        parent = digest.digest()
        hashes.append(int.from_bytes(parent, "little"))
    return hashes


def route_request(
    payload: Any, seq: int, index: PrefixIndex, config: PrefixConfig, session_key: str | None
) -> tuple[RouteRequest, list[int]]:
    """The policy's view of a request and its prompt's block hashes (which the caller inserts
    into `index` for the replica it picks). Shared by the router and the fleet simulator."""
    hashes = block_hashes(prompt_text(payload), config)
    return RouteRequest(seq, len(hashes), index.match(hashes), session_key), hashes


class PrefixIndex:
    """Block hash -> replicas sent that prefix; each replica's entries form an LRU of at most
    `max_blocks_per_replica` hashes, like the replica's own cache evicting its oldest blocks.

    `match` only reads; `insert` and `forget_replica` mutate. Not thread-safe (one event loop).
    """

    def __init__(self, max_blocks_per_replica: int) -> None:
        self.max_blocks_per_replica = max_blocks_per_replica
        self._holders: dict[int, set[str]] = {}  # hash -> replica ids
        self._lru: dict[str, OrderedDict[int, None]] = {}  # replica id -> its hashes, LRU first

    def __len__(self) -> int:
        return len(self._holders)

    def match(self, hashes: Sequence[int]) -> Mapping[str, int]:
        """replica_id -> number of leading `hashes` it holds; replicas with none are absent."""
        matched: dict[str, int] = {}
        for k, h in enumerate(hashes):
            extended = False
            for replica_id in self._holders.get(h, ()):
                if matched.get(replica_id, 0) == k:
                    matched[replica_id] = k + 1
                    extended = True
            if not extended:
                break
        return matched

    def insert(self, hashes: Sequence[int], replica_id: str) -> None:
        """Record that `replica_id` was sent a prompt with these blocks; evicts its LRU ones."""
        lru = self._lru.setdefault(replica_id, OrderedDict())
        # NOTE: deepest block first, so the root ends up most recently used and a prefix is
        # evicted from its tail, never from its head (which would orphan the rest).
        for h in reversed(hashes):
            if h in lru:
                lru.move_to_end(h)
            else:
                lru[h] = None
                self._holders.setdefault(h, set()).add(replica_id)
        while len(lru) > self.max_blocks_per_replica:
            old, _ = lru.popitem(last=False)
            self._drop(old, replica_id)

    def forget_replica(self, replica_id: str) -> None:
        """Drop a replica whose cache is gone (restarted, ejected or removed)."""
        for h in self._lru.pop(replica_id, {}):
            self._drop(h, replica_id)

    def _drop(self, h: int, replica_id: str) -> None:
        holders = self._holders[h]
        holders.discard(replica_id)
        if not holders:
            del self._holders[h]

    def check_integrity(self) -> None:
        pairs = {(h, r) for h, rs in self._holders.items() for r in rs}
        assert pairs == {(h, r) for r, lru in self._lru.items() for h in lru}, "index out of sync"
        assert all(len(lru) <= self.max_blocks_per_replica for lru in self._lru.values())
        assert all(self._holders.values()), "an entry without replicas"
