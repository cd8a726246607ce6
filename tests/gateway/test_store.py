"""The repository on both real databases: migrations (once, also when two processes start
together), keys, conversations, the reply lifecycle, usage."""

from __future__ import annotations

import json
import threading
import time

import pytest

from chatfleet.errors import ChatfleetError
from chatfleet.gateway.store import open_store
from chatfleet.gateway.store.base import (
    INTERRUPTED_ERROR,
    ReplyEnd,
    StorageQuotaError,
    Usage,
    UsageOwner,
)
from chatfleet.gateway.store.migrations import LATEST_VERSION


def test_migrations_run_once_even_when_started_together(db_url):
    stores, errors = [], []

    def start() -> None:
        try:
            stores.append(open_store(db_url))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=start) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(stores) == 3
    assert sorted(len(s.applied_migrations) for s in stores) == [0, 0, LATEST_VERSION]
    for s in stores:
        s.close()
    again = open_store(db_url)
    assert again.applied_migrations == []
    again.close()


def test_store_round_trip(db_url):
    store = open_store(db_url)
    try:
        alice = store.create_user("alice")
        with pytest.raises(ChatfleetError, match="already exists"):
            store.create_user("alice")
        key, plain = store.create_key(alice.user_id, "laptop", rpm=5)
        assert store.get_key(key.key_id) == key and key.rpm == 5 and key.user_name == "alice"
        assert plain.split("_")[1] == key.key_id
        assert store.revoke_key(key.key_id) and store.get_key(key.key_id).is_revoked
        assert not store.revoke_key("missing")

        conv = store.create_conversation(alice.user_id, system_prompt="be brief")
        user, reply = store.start_reply(conv.conversation_id, "Hi", title="Hi")
        assert (user.role, reply.role, reply.status) == ("user", "assistant", "streaming")
        assert user.seq < reply.seq
        store.update_reply(reply.message_id, "Hel")
        assert store.list_messages(conv.conversation_id)[1].content == "Hel"
        with pytest.raises(ChatfleetError, match="still being written"):
            store.start_reply(conv.conversation_id, "Again?", stale_before=time.time() - 60)
        end = ReplyEnd("complete", "Hello", "stop", usage=Usage(10, 2, 8))
        day = UsageOwner("2030-01-02", alice.user_id, key.key_id)
        done = store.finish_reply(reply.message_id, end, day)
        assert (done.status, done.content, done.usage) == ("complete", "Hello", Usage(10, 2, 8))
        store.update_reply(reply.message_id, "late heartbeat")  # ignored once finished
        assert store.list_messages(conv.conversation_id)[1].content == "Hello"

        # Regenerate: the reply is replaced once the upstream took the new one.
        _, again = store.start_reply(conv.conversation_id, None)
        store.accept_reply(again.message_id, reply.message_id)
        assert [m.message_id for m in store.list_messages(conv.conversation_id)] == [
            user.message_id,
            again.message_id,
        ]
        assert store.expire_stale_replies(time.time() - 3600) == 0  # fresh heartbeat
        assert store.expire_stale_replies(time.time() + 1) == 1
        stale = store.list_messages(conv.conversation_id)[1]
        assert stale.status == "incomplete" and stale.error == INTERRUPTED_ERROR

        updated = store.update_conversation(conv.conversation_id, title="Renamed", context_start=2)
        assert (updated.title, updated.context_start) == ("Renamed", 2)
        assert [c.conversation_id for c in store.list_conversations(alice.user_id, 10)] == [
            conv.conversation_id
        ]
        store.record_usage(day, Usage(5, 1, 0))
        (row,) = store.list_usage("2030-01-01", alice.user_id)
        assert (row.num_requests, row.prompt_tokens, row.completion_tokens) == (2, 15, 3)
        assert row.cached_tokens == 8 and row.user_name == "alice"
        # A refused reply goes, with the message it answered.
        asked, dropped = store.start_reply(conv.conversation_id, "Refused?")
        store.drop_reply(dropped.message_id, asked.message_id)
        assert len(store.list_messages(conv.conversation_id)) == 2
        assert store.list_usage("2030-01-03") == []

        assert store.delete_conversation(conv.conversation_id)
        assert store.get_conversation(conv.conversation_id) is None
        assert store.list_messages(conv.conversation_id) == []
        assert not store.delete_conversation(conv.conversation_id)
    finally:
        store.close()


def test_tools_and_tool_calls_are_kept_and_older_databases_gain_them(db_url, monkeypatch):
    """A conversation's tools and tool choice, and a reply's tool calls, round-trip; a database
    made before they existed is migrated, and its rows read as having none."""
    from chatfleet.gateway.store import migrations

    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:1])
    monkeypatch.setattr(migrations, "LATEST_VERSION", 1)
    old = open_store(db_url)
    old.db.run("INSERT INTO users (user_id, name, created_at) VALUES ('u1', 'erin', 0)")
    old.db.run(
        "INSERT INTO conversations (conversation_id, user_id, created_at, updated_at) "
        "VALUES ('c1', 'u1', 0, 0)"
    )
    old.db.run(
        "INSERT INTO messages (message_id, conversation_id, role, content, status, created_at, "
        "updated_at) VALUES ('m1', 'c1', 'user', 'Hi', 'complete', 0, 0)"
    )
    old.close()
    monkeypatch.undo()

    store = open_store(db_url)
    try:
        assert store.applied_migrations == list(range(2, migrations.LATEST_VERSION + 1))
        before = store.get_conversation("c1")
        assert (before.tools, before.tool_choice) == ([], None)
        assert store.list_messages("c1")[0].tool_calls == []

        tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
        named = {"type": "function", "function": {"name": "f"}}
        conv = store.create_conversation("u1", tools=[tool], tool_choice=named)
        assert store.get_conversation(conv.conversation_id) == conv
        assert (conv.tools, conv.tool_choice) == ([tool], named)
        size = store.stored_bytes("u1")
        call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        _, reply = store.start_reply(conv.conversation_id, "Call f.")
        done = store.finish_reply(
            reply.message_id, ReplyEnd("complete", "", "tool_calls", tool_calls=[call])
        )
        assert done.tool_calls == [call]
        assert store.list_messages(conv.conversation_id)[1].tool_calls == [call]
        stored_call = json.dumps([call], separators=(",", ":"))
        assert store.stored_bytes("u1") == size + len("Call f.") + len(stored_call)
        changed = store.update_conversation(conv.conversation_id, tools=[], tool_choice="auto")
        assert (changed.tools, changed.tool_choice) == ([], "auto")
    finally:
        store.close()


def test_bad_database_urls_are_refused():
    for url in ["mysql://x", "sqlite:///", "nonsense"]:
        with pytest.raises(ValueError):
            open_store(url)


def test_sqlite_connections_opening_a_new_database_together_never_see_it_locked(tmp_path):
    """Switching a new database to WAL takes an exclusive lock that SQLite's busy handler does
    not wait for: without a retry, about 1 in 50 races of six connections failed."""
    from chatfleet.gateway.store.sqlite import sqlite_dialect

    errors: list[Exception] = []

    def connect(url: str) -> None:
        try:
            sqlite_dialect(url).connect().close()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    for trial in range(400):
        url = f"sqlite:///{tmp_path / f'race{trial}.db'}"
        threads = [threading.Thread(target=connect, args=(url,)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert errors == []


def test_a_reply_ends_with_its_usage_or_not_at_all(db_url):
    """finish_reply writes the reply's end and its usage in one transaction: when the end is
    refused (here a status the schema does not allow to be empty), no usage is left behind,
    and a second try bills once."""
    store = open_store(db_url)
    try:
        bob = store.create_user("bob")
        key, _ = store.create_key(bob.user_id)
        conv = store.create_conversation(bob.user_id)
        _, reply = store.start_reply(conv.conversation_id, "Hi")
        owner = UsageOwner("2030-02-01", bob.user_id, key.key_id)
        refused = ReplyEnd(None, "Hello", usage=Usage(10, 4))  # type: ignore[arg-type]
        with pytest.raises(Exception):  # noqa: B017 - each database raises its own class
            store.finish_reply(reply.message_id, refused, owner)
        assert store.list_messages(conv.conversation_id)[1].status == "streaming"
        assert store.list_usage("2030-02-01") == []
        end = ReplyEnd("complete", "Hello", "stop", usage=Usage(10, 4))
        assert store.finish_reply(reply.message_id, end, owner).status == "complete"
        (row,) = store.list_usage("2030-02-01")
        assert (row.num_requests, row.prompt_tokens, row.completion_tokens) == (1, 10, 4)
    finally:
        store.close()


def test_the_storage_quota_holds_across_gateways_writing_at_once(db_url):
    """Two stores (two gateways) start replies for one user in parallel: the quota is checked
    in the write's own transaction, so together they never pass it; a refused write leaves
    nothing, and a rename adds no text, so it is never refused."""
    stores = [open_store(db_url) for _ in range(2)]
    try:
        alice = stores[0].create_user("alice")
        convs = [stores[0].create_conversation(alice.user_id) for _ in range(12)]

        def say(i: int) -> bool:
            try:
                stores[i % 2].start_reply(convs[i].conversation_id, "x" * 1000, None, 0.0, 5000)
            except StorageQuotaError:
                return False
            return True

        threads = [threading.Thread(target=say, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert stores[0].stored_bytes(alice.user_id) == 5000
        with pytest.raises(StorageQuotaError):
            stores[1].create_conversation(alice.user_id, system_prompt="y", max_stored_bytes=5000)
        conv_id = convs[0].conversation_id
        tool = {"type": "function", "function": {"name": "f"}}
        with pytest.raises(StorageQuotaError):
            stores[1].update_conversation(conv_id, title="t", tools=[tool], max_stored_bytes=5000)
        assert stores[0].get_conversation(conv_id).title == ""  # rolled back with the tools
        renamed = stores[1].update_conversation(conv_id, title="t", max_stored_bytes=5000)
        assert renamed is not None and renamed.title == "t"
        assert len(stores[0].list_conversations(alice.user_id, 100)) == 12
        assert stores[0].stored_bytes(alice.user_id) == 5000
    finally:
        for store in stores:
            store.close()


def test_text_with_nul_is_kept_and_a_reply_with_one_is_billed(db_url):
    """PostgreSQL's text cannot hold NUL: a title, message or id with one is stored (or not
    found), never an error, and a reply the model ended with one still ends with its usage."""
    store = open_store(db_url)
    try:
        eve = store.create_user("eve")
        key, _ = store.create_key(eve.user_id, name="k\x00")
        conv = store.create_conversation(eve.user_id, "a\x00b", "sys\x00")
        assert store.get_conversation("\x00") is None and store.get_key("\x00") is None
        _, reply = store.start_reply(conv.conversation_id, "hi\x00")
        owner = UsageOwner("2030-03-01", eve.user_id, key.key_id)
        end = ReplyEnd("complete", "bye\x00", "stop", usage=Usage(7, 3))
        assert store.finish_reply(reply.message_id, end, owner).status == "complete"
        (row,) = store.list_usage("2030-03-01")
        assert (row.prompt_tokens, row.completion_tokens) == (7, 3)
        assert [m.content[:2] for m in store.list_messages(conv.conversation_id)] == ["hi", "by"]
    finally:
        store.close()
