"""The repository interface: everything the gateway keeps, behind one small base class.

Implementations (sql.py over SQLite or PostgreSQL) are picked from `STORES` by URL scheme.
Every method is synchronous and thread-safe; the app calls them from worker threads. Methods
that take an id of a row that does not exist return None / False rather than raising.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from chatfleet.http.http_errors import PayloadTooLargeError

# Message.status: a reply is "streaming" while it is written; it ends "complete", "stopped"
# (the client stopped it), "failed" (the upstream failed) or "incomplete" (its gateway died).
STATUSES = ("complete", "streaming", "stopped", "failed", "incomplete")
FINAL_STATUSES = frozenset(STATUSES) - {"streaming"}
INTERRUPTED_ERROR = "the gateway stopped while this reply was streaming"
# A key's own rpm, tpm and max_streams are INTEGER columns: PostgreSQL's range bounds them.
MAX_KEY_LIMIT = 2**31 - 1


class StorageQuotaError(PayloadTooLargeError):
    """A write would take a user's conversations past their stored bytes (413)."""

    code = "storage_quota_exceeded"


@dataclass(frozen=True)
class User:
    user_id: str
    name: str
    is_admin: bool
    created_at: float


@dataclass(frozen=True)
class ApiKey:
    """A stored key (never its secret) with its owner's name and role joined in."""

    key_id: str
    user_id: str
    user_name: str
    is_admin: bool
    name: str
    salt: str
    secret_hash: str
    rpm: int | None  # None: the gateway's default
    tpm: int | None
    max_streams: int | None
    created_at: float
    revoked_at: float | None

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None


@dataclass(frozen=True)
class Conversation:
    conversation_id: str
    user_id: str
    title: str
    system_prompt: str
    context_start: int  # seq of the oldest message still sent upstream (0: from the start)
    created_at: float
    updated_at: float
    tools: list[dict[str, Any]] = field(default_factory=list)  # OpenAI tool objects
    tool_choice: str | dict[str, Any] | None = None  # OpenAI tool_choice (None: the default)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # the part of prompt_tokens the upstream's prefix cache served


@dataclass(frozen=True)
class Message:
    message_id: str
    conversation_id: str
    seq: int  # order within the conversation (increasing, not contiguous)
    role: str  # "user" or "assistant"
    content: str
    status: str  # one of STATUSES
    finish_reason: str | None
    error: str | None
    usage: Usage
    created_at: float
    updated_at: float
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # OpenAI tool-call objects


@dataclass(frozen=True)
class UsageRow:
    day: str  # UTC, YYYY-MM-DD
    user_id: str
    user_name: str
    key_id: str
    num_requests: int
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class ReplyEnd:
    """How a reply ended; written once by `finish_reply`."""

    status: str  # a FINAL_STATUSES value
    content: str
    finish_reason: str | None = None
    error: str | None = None
    usage: Usage = Usage()
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class UsageOwner:
    """Whose day of usage a request's tokens are added to."""

    day: str  # YYYY-MM-DD, UTC
    user_id: str
    key_id: str


class GatewayStore(ABC):
    """Users, API keys, conversations, messages and daily usage."""

    # ---- users and keys ---------------------------------------------------------------
    @abstractmethod
    def create_user(self, name: str, is_admin: bool = False) -> User:
        """A new user; raises ConflictError if the name is taken."""

    @abstractmethod
    def get_user_by_name(self, name: str) -> User | None: ...

    @abstractmethod
    def create_key(
        self,
        user_id: str,
        name: str = "",
        rpm: int | None = None,
        tpm: int | None = None,
        max_streams: int | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key for an existing user: (stored record, the plain key to show once)."""

    @abstractmethod
    def get_key(self, key_id: str) -> ApiKey | None: ...

    @abstractmethod
    def list_keys(self, user_id: str | None = None) -> list[ApiKey]:
        """Keys of one user (or all), revoked ones included, oldest first."""

    @abstractmethod
    def revoke_key(self, key_id: str) -> bool:
        """Mark the key revoked (idempotent); False if there is no such key."""

    # ---- conversations ----------------------------------------------------------------
    @abstractmethod
    def create_conversation(
        self,
        user_id: str,
        title: str = "",
        system_prompt: str = "",
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        max_stored_bytes: int | None = None,
    ) -> Conversation:
        """StorageQuotaError, with nothing written, if the user's conversations would then
        hold more than `max_stored_bytes` (checked and written in one transaction)."""

    @abstractmethod
    def get_conversation(self, conversation_id: str) -> Conversation | None: ...

    @abstractmethod
    def stored_bytes(self, user_id: str) -> int:
        """What the user's conversations take in bytes: system prompts, tools, message texts
        and tool calls."""

    @abstractmethod
    def list_conversations(
        self, user_id: str, limit: int, before: float | None = None
    ) -> list[Conversation]:
        """Most recently updated first; `before` pages on updated_at."""

    @abstractmethod
    def update_conversation(
        self,
        conversation_id: str,
        title: str | None = None,
        context_start: int | None = None,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        max_stored_bytes: int | None = None,
    ) -> Conversation | None:
        """Set the fields given (not None); None if the conversation does not exist.
        StorageQuotaError, with nothing written, if new tools would take its
        user past `max_stored_bytes`."""

    @abstractmethod
    def delete_conversation(self, conversation_id: str) -> bool:
        """Delete it with its messages; False if it did not exist."""

    # ---- messages ---------------------------------------------------------------------
    @abstractmethod
    def list_messages(self, conversation_id: str) -> list[Message]:
        """In order (by seq)."""

    @abstractmethod
    def start_reply(
        self,
        conversation_id: str,
        user_content: str | None,
        title: str | None = None,
        stale_before: float = 0.0,
        max_stored_bytes: int | None = None,
    ) -> tuple[Message | None, Message]:
        """One transaction, taken alone per conversation: ConflictError if a reply there is
        still "streaming" (touched since `stale_before`); else append the user message (if
        any) and an empty "streaming" assistant message, set the title (if given and the
        conversation has none) and bump updated_at. Returns (user message or None, reply).
        StorageQuotaError, with nothing written, if the user message would take the user's
        conversations past `max_stored_bytes`."""

    @abstractmethod
    def accept_reply(self, message_id: str, replace_message_id: str | None) -> None:
        """The upstream took the reply: delete the reply it regenerates (if any)."""

    @abstractmethod
    def drop_reply(self, message_id: str, user_message_id: str | None) -> None:
        """The upstream refused the reply: delete it and the user message it answered."""

    @abstractmethod
    def update_reply(self, message_id: str, content: str) -> None:
        """Store the partial text of a streaming reply; also its heartbeat (updated_at)."""

    @abstractmethod
    def finish_reply(
        self, message_id: str, end: ReplyEnd, owner: UsageOwner | None = None
    ) -> Message | None:
        """Write the final state of a streaming reply and, in the same transaction, add its
        usage to `owner`'s day; None if the reply is gone (deleted; the usage still counts)."""

    @abstractmethod
    def expire_stale_replies(self, stale_before: float) -> int:
        """Mark "streaming" replies untouched since `stale_before` as "incomplete"
        (their gateway died). Returns how many."""

    # ---- usage --------------------------------------------------------------------------
    @abstractmethod
    def record_usage(self, owner: UsageOwner, usage: Usage) -> None:
        """Add one request and its token counts to the (day, key) row."""

    @abstractmethod
    def list_usage(self, since_day: str, user_id: str | None = None) -> list[UsageRow]:
        """Rows from `since_day` on, for one user or all; by day, then key."""

    @abstractmethod
    def close(self) -> None: ...
