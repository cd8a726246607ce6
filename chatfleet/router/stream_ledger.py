"""What the router keeps of a stream in flight so that another replica can finish it.

    replica chunk {..., "chatfleet_token_ids": [...]} --StreamLedger.relay--> client chunk
                   records the token ids, the characters of text sent, the stream's id and
                   created; strips the ids (a chunk of ids alone is dropped); on a resumed
                   stream, writes the first replica's id and created into every chunk

`continuation(ledger)` is the request that resumes it: the same request, plus the tokens so
far and how much of their text the client has (`chatfleet_continue`, server/protocol.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from chatfleet.errors import EngineDeadError
from chatfleet.http import sse

# Client requests never carry these: only the router asks for them (a client that could
# would have a reply continue from tokens it made up, or read the replica's token ids).
EXTENSIONS = ("chatfleet_token_ids", "chatfleet_continue")


def strip_extensions(payload: Any) -> Any:
    if not isinstance(payload, dict):
        return payload
    return {k: v for k, v in payload.items() if k not in EXTENSIONS}


def resumable(path: str, payload: Any) -> bool:
    """A stream whose every token the router can account for and another replica can
    continue exactly: one plain choice of one prompt (no tools, no echo), and no seeded
    sampling under a grammar (a refused draw is drawn again, so its draws are not one per
    token)."""
    if not isinstance(payload, dict) or payload.get("stream") is not True:
        return False
    if payload.get("n", 1) != 1 or payload.get("tools") or payload.get("echo"):
        return False
    if path.endswith("/completions") and not path.endswith("/chat/completions"):
        prompt = payload.get("prompt")
        if not (isinstance(prompt, str) or all(isinstance(t, int) for t in prompt or [None])):
            return False
    fmt = payload.get("response_format")
    constrained = isinstance(fmt, dict) and fmt.get("type", "text") != "text"
    seeded = payload.get("seed") is not None and payload.get("temperature", 1) != 0
    return not (constrained and seeded)


@dataclass
class StreamLedger:
    """One resumable stream: its tokens and the text of them the client has."""

    payload: dict[str, Any]  # the request, as sent to the first replica
    token_ids: list[int] = field(default_factory=list)
    sent_chars: int = 0
    stream_id: str | None = None
    created: int | None = None
    finished: bool = False  # a choice's finish_reason went out: nothing is left to resume
    resumed: bool = False
    # The replica's stream said its engine died: the replica failed, not the request, so the
    # stream is resumed elsewhere; that event and what follows it are not the client's.
    replica_failed: bool = False
    _replayed: bool = False  # a continuation was sent: its first ids restate the reply's

    def relay(self, events: bytes) -> bytes:
        """Complete SSE events from the replica -> what the client gets."""
        out = []
        for raw in events.split(b"\n\n"):
            if raw.strip() and not self.replica_failed:
                kept = self._event(raw)
                if kept is not None:
                    out.append(kept + b"\n\n")
        return b"".join(out)

    def _event(self, raw: bytes) -> bytes | None:
        if not raw.startswith(b"data:") or raw[5:].strip() == b"[DONE]":
            return raw  # a comment, or the end
        chunk = json.loads(raw[5:])
        if isinstance(chunk, dict) and "error" in chunk:
            error = chunk["error"]
            code = error.get("code") if isinstance(error, dict) else None
            self.replica_failed = code == EngineDeadError.code
            return None if self.replica_failed else raw
        if not isinstance(chunk, dict):
            return raw
        ids = chunk.pop("chatfleet_token_ids", None) or []
        if ids and self._replayed:  # a continued reply's first ids are all of the reply's
            self.token_ids, self._replayed = list(ids), False
        else:
            self.token_ids += ids
        if self.stream_id is None:
            self.stream_id, self.created = chunk.get("id"), chunk.get("created")
        elif self.resumed:
            chunk["id"], chunk["created"] = self.stream_id, self.created
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta")
            text = (delta or {}).get("content") if "delta" in choice else choice.get("text")
            self.sent_chars += len(text or "")
            self.finished |= choice.get("finish_reason") is not None
        if not chunk.get("choices") and "usage" not in chunk:
            return None  # token ids alone: nothing for the client
        return sse.event(chunk).encode().rstrip(b"\n")

    def continuation(self) -> bytes:
        """The request that resumes the stream on another replica."""
        self.resumed, self.replica_failed = True, False
        payload = dict(self.payload)
        if self.token_ids:  # else nothing reached the client: the request as it was
            self._replayed = True
            payload["chatfleet_continue"] = {
                "token_ids": self.token_ids,
                "sent_chars": self.sent_chars,
            }
        return json.dumps(payload).encode()
