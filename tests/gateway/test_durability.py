"""SIGKILL a gateway in the middle of a streamed reply and start it again, on SQLite and on
PostgreSQL: every conversation and every completed message is still there, and the
interrupted reply is stored as "incomplete" with the text it had so far."""

from __future__ import annotations

import signal
import time

from tests.gateway.conftest import get_conversation, make_key, new_conversation, post_sse, say


def test_killed_gateway_loses_nothing(gateway_factory, db_url):
    key = make_key(db_url, "alice")
    gw = gateway_factory(db_url)
    done = new_conversation(gw.base_url, key)
    assert say(gw.base_url, key, done, "Hello!", max_tokens=8).end["message"]["status"] == (
        "complete"
    )
    conv = new_conversation(gw.base_url, key)
    first = say(gw.base_url, key, conv, "Name a colour.", max_tokens=8)
    before_done = get_conversation(gw.base_url, key, done).json()

    deltas = []

    def on_event(event: dict) -> bool:
        if event["type"] == "delta":
            deltas.append(event["content"])
            if len(deltas) == 8:
                time.sleep(0.5)  # a heartbeat or two writes the partial text
                gw.stop(signal.SIGKILL)
        return False

    body = {"content": "Write a long story about a dragon and a knight.", "max_tokens": 400}
    cut = post_sse(gw.base_url, key, f"/api/conversations/{conv}/messages", body, on_event)
    assert cut.end is None and len(deltas) >= 8  # the stream died with the gateway

    again = gateway_factory(db_url)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        messages = get_conversation(again.base_url, key, conv).json()["messages"]
        if messages[-1]["status"] != "streaming":
            break
        time.sleep(0.2)
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[1]["content"] == first.text and messages[1]["status"] == "complete"
    assert messages[2]["content"] == body["content"] and messages[2]["status"] == "complete"
    interrupted = messages[3]
    assert interrupted["status"] == "incomplete" and interrupted["error"]
    assert interrupted["content"] and "".join(deltas).startswith(interrupted["content"])
    assert get_conversation(again.base_url, key, done).json() == before_done
    # The sweeper also stores the state (not only reports it), and the conversation goes on.
    time.sleep(1.0)
    assert say(again.base_url, key, conv, "Go on.").end["message"]["status"] == "complete"
    assert get_conversation(again.base_url, key, conv).json()["messages"][3] == interrupted
