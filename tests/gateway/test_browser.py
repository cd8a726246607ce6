"""The web chat page in a real browser (Debian's Chromium, driven by playwright-core through
browser/chat_page.mjs): sign in, a reply streams in, stop, reload, a script tag in the
model's reply and other untrusted HTML."""

from __future__ import annotations

import json
import os
import subprocess

import httpx
import jsonschema
import pytest

from chatfleet.gateway.store import open_store
from chatfleet.gateway.store.base import ReplyEnd
from tests.gateway.conftest import auth, make_key
from tests.server.test_structured_api import PARAMETERS, WEATHER

HERE = os.path.join(os.path.dirname(__file__), "browser")
# Model output is untrusted: a script tag, an event handler and a javascript: link in it
# must not run; the Markdown around them still renders.
HOSTILE_REPLY = """Here is **bold** text and code:

```python
print("hello")
```

<script>window.__pwned = "script"</script>
<img src="x" onerror="window.__pwned = 'onerror'">
<a href="javascript:window.__pwned='link'">click</a>
"""


HOSTILE_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "render", "arguments": '{"html": "<img src=x onerror=alert(1)>"}'},
}


def _conversations(db_url: str, user: str) -> tuple[str, str]:
    """(a conversation with a hostile reply and tool call, one whose replies must call
    get_weather)."""
    store = open_store(db_url)
    try:
        owner = store.get_user_by_name(user)
        conv = store.create_conversation(owner.user_id, title="hostile")
        _, reply = store.start_reply(conv.conversation_id, "Show me some HTML.")
        end = ReplyEnd("complete", HOSTILE_REPLY, "stop", tool_calls=[HOSTILE_CALL])
        store.finish_reply(reply.message_id, end)
        named = {"type": "function", "function": {"name": "get_weather"}}
        tools = store.create_conversation(
            owner.user_id, title="tools", tools=[WEATHER], tool_choice=named
        )
        return conv.conversation_id, tools.conversation_id
    finally:
        store.close()


def test_chat_page_in_chromium(gateway_factory, sqlite_url):
    if not os.path.isdir(os.path.join(HERE, "node_modules", "playwright-core")):
        pytest.fail("playwright-core is not installed: `make test` runs npm ci in " + HERE)
    if not os.path.exists("/usr/bin/chromium"):
        pytest.fail("Debian's chromium is not installed: `make test` installs it")
    key = make_key(sqlite_url, "alice")
    hostile, tools = _conversations(sqlite_url, "alice")
    gw = gateway_factory(sqlite_url, "--reply-max-tokens", "96")
    run = subprocess.run(
        ["node", os.path.join(HERE, "chat_page.mjs"), gw.base_url, key, hostile, tools],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=HERE,
    )
    assert run.returncode == 0, run.stderr + run.stdout
    seen = json.loads(run.stdout.strip().splitlines()[-1])

    assert seen["badKeyError"] and seen["userName"] == "alice"
    # The reply was drawn while it streamed (growing text), then completed.
    samples = seen["firstReply"]
    streaming = [n for status, n in samples if status == "streaming" and n > 0]
    assert len(set(streaming)) >= 2, samples
    assert samples[-1][0] == "complete" and samples[-1][1] >= max(streaming)
    # Stopped mid-reply, and the server stored it as stopped.
    assert seen["stoppedText"]
    assert seen["statusesBeforeReload"] == [
        "user:complete",
        "assistant:complete",
        "user:complete",
        "assistant:stopped",
    ]
    assert seen["statusesAfterReload"] == seen["statusesBeforeReload"]
    assert seen["conversationId"] in seen["listed"] and hostile in seen["listed"]
    assert seen["titleAfterReload"] == "Tell me a short story about a cat."
    assert seen["stoppedTextAfterReload"].startswith(seen["stoppedText"][:20])
    assert seen["regenerated"][-1][0] == "complete"
    assert seen["statusesAfterRegenerate"] == ["user:complete", "assistant:complete"] * 2
    # The model's own reply carried a script tag: stored as text, shown as text, never run.
    assert seen["scriptReply"][-1][0] == "complete"
    conv = httpx.get(
        f"{gw.base_url}/api/conversations/{seen['scriptConversationId']}",
        headers=auth(key),
        timeout=10,
    ).json()
    assert "<script>" in conv["messages"][-1]["content"]
    assert seen["scriptRendered"]["pwned"] is None and seen["scriptRendered"]["scripts"] == 0
    # A tool call streams in as a block: the function's name and its arguments, which
    # validate; stored, it comes back after a reload.
    assert seen["toolReply"][-1][0] == "complete"
    (call,) = seen["toolCalls"]
    assert call["name"] == "Tool call: get_weather"
    jsonschema.validate(json.loads(call["arguments"]), PARAMETERS["get_weather"])
    assert seen["toolCallsAfterReload"] == seen["toolCalls"]
    # Untrusted HTML (in a reply and in a tool call's arguments): nothing ran, nothing
    # dangerous reached the DOM, Markdown still works.
    assert seen["xss"] == {
        "pwned": None,
        "scripts": 0,
        "handlers": 0,
        "javascriptLinks": 0,
        "strong": 1,
        "imgs": 1,
        "toolCallText": json.dumps(json.loads(HOSTILE_CALL["function"]["arguments"]), indent=2),
        "copyButtons": 1,
    }
    assert seen["clipboard"].strip() == 'print("hello")'
    assert seen["dialogs"] == [] and seen["pageErrors"] == []
    assert seen["offsiteRequests"] == []  # works offline: no CDN
