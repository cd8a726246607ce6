"""What the router keeps of a resumable stream (router/stream_ledger.py), event by event."""

from __future__ import annotations

import json

from chatfleet.router.stream_ledger import StreamLedger, resumable, strip_extensions


def _event(obj) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


def _chunk(stream_id: str, created: int, content: str | None, ids: list[int], **extra) -> bytes:
    choices = [] if content is None else [{"index": 0, "delta": {"content": content}}]
    body = {"id": stream_id, "created": created, "choices": choices, **extra}
    return _event(body | {"chatfleet_token_ids": ids} if ids else body)


def _relayed(ledger: StreamLedger, raw: bytes) -> list:
    out = ledger.relay(raw).decode()
    return [e.removeprefix("data: ") for e in out.split("\n\n") if e]


def test_ids_are_kept_and_stripped_and_a_resumed_stream_keeps_its_first_id():
    payload = {"stream": True, "messages": [], "chatfleet_token_ids": True}
    ledger = StreamLedger(payload)
    events = _chunk("a", 1, "Hel", [5, 6]) + _chunk("a", 1, None, [7]) + b": keep-alive\n\n"
    relayed = _relayed(ledger, events)
    assert json.loads(relayed[0])["choices"][0]["delta"]["content"] == "Hel"
    assert "chatfleet_token_ids" not in json.loads(relayed[0])
    assert relayed[1:] == [": keep-alive"]  # the ids-only chunk is not the client's
    assert (ledger.token_ids, ledger.sent_chars) == ([5, 6, 7], 3)

    body = json.loads(ledger.continuation())
    assert body["chatfleet_continue"] == {"token_ids": [5, 6, 7], "sent_chars": 3}
    assert body["chatfleet_token_ids"] is True and body["messages"] == []
    # The other replica's chunks: its first ids restate the reply; its id and created are not
    # the client's.
    finish = {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}
    usage = {"usage": {"completion_tokens": 5}}
    events = _chunk("b", 2, "lo", [5, 6, 7, 8]) + _event({"id": "b", "created": 2} | finish)
    events += _event({"id": "b", "created": 2, "choices": []} | usage) + b"data: [DONE]\n\n"
    relayed = _relayed(ledger, events)
    assert [json.loads(e)["id"] for e in relayed[:3]] == ["a"] * 3
    assert [json.loads(e)["created"] for e in relayed[:3]] == [1] * 3
    assert json.loads(relayed[2])["usage"] == {"completion_tokens": 5}
    assert relayed[3] == "[DONE]"
    assert (ledger.token_ids, ledger.sent_chars, ledger.finished) == ([5, 6, 7, 8], 5, True)


def test_what_can_be_resumed_and_what_clients_cannot_send():
    chat = {"stream": True, "messages": []}
    assert resumable("/v1/chat/completions", chat)
    assert not resumable("/v1/chat/completions", {**chat, "stream": False})
    assert not resumable("/v1/chat/completions", {**chat, "n": 2})
    assert not resumable("/v1/chat/completions", {**chat, "tools": [{"type": "function"}]})
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}
    assert resumable("/v1/chat/completions", {**chat, "response_format": schema})
    seeded = {**chat, "response_format": schema, "seed": 1, "temperature": 0.7}
    assert not resumable("/v1/chat/completions", seeded)  # a refused draw is drawn again
    assert resumable("/v1/chat/completions", {**seeded, "temperature": 0})
    assert resumable("/v1/completions", {"stream": True, "prompt": "Hi"})
    assert resumable("/v1/completions", {"stream": True, "prompt": [1, 2]})
    assert not resumable("/v1/completions", {"stream": True, "prompt": ["a", "b"]})
    assert not resumable("/v1/completions", {"stream": True, "prompt": "a", "echo": True})
    forged = {**chat, "chatfleet_continue": {"token_ids": [1]}, "chatfleet_token_ids": True}
    assert strip_extensions(forged) == chat


def test_a_dead_engine_is_the_replicas_failure_and_other_errors_are_the_clients():
    """An `engine_dead` error event marks the replica failed and, with the [DONE] after it,
    never reaches the client (the stream resumes elsewhere); any other error is passed on."""
    ledger = StreamLedger({"stream": True, "messages": []})
    dead = {"error": {"message": "the engine loop died", "code": "engine_dead"}}
    events = _chunk("a", 1, "Hi", [5]) + _event(dead) + b"data: [DONE]\n\n"
    assert [json.loads(e)["choices"][0]["delta"] for e in _relayed(ledger, events)] == [
        {"content": "Hi"}
    ]
    assert ledger.replica_failed and ledger.token_ids == [5]
    ledger.continuation()
    assert not ledger.replica_failed
    timeout = {"error": {"message": "the request timed out", "code": "request_timeout"}}
    assert _relayed(ledger, _event(timeout)) == [json.dumps(timeout)]
    assert not ledger.replica_failed
