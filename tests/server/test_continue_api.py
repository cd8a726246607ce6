"""The router's extensions on a replica: `chatfleet_token_ids` (each chunk's token ids) and
`chatfleet_continue` (a reply begun elsewhere, streamed from the first character its client
lacks, ahead of new requests)."""

from __future__ import annotations

import json
import threading
import time

import httpx

from tests.server_process import start_server

BODY = {
    "messages": [{"role": "user", "content": "Tell me about lighthouses."}],
    "max_tokens": 40,
    "temperature": 0,
    "ignore_eos": True,
    "stream": True,
    "stream_options": {"include_usage": True},
}


def chunks(base_url: str, body: dict) -> list[dict]:
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200, r.read()
        lines = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def text_of(events: list[dict]) -> str:
    return "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])


def test_a_continued_stream_starts_where_its_client_is(server):
    whole = chunks(server.base_url, {**BODY, "chatfleet_token_ids": True})
    ids = [t for e in whole for t in e.get("chatfleet_token_ids", [])]
    assert len(ids) == 40 and whole[0]["choices"][0]["delta"]["role"] == "assistant"
    text = text_of(whole)
    sent = len(text_of(whole[:12]))  # what a client had when its replica died
    resume = {"token_ids": ids[:15], "sent_chars": sent}  # ids run ahead of text sent
    rest = chunks(server.base_url, {**BODY, "chatfleet_continue": resume})
    assert "role" not in rest[0]["choices"][0]["delta"]  # the client has had its opening
    assert text[:sent] + text_of(rest) == text
    assert rest[-1]["usage"]["completion_tokens"] == 40  # the whole reply's
    assert all("chatfleet_token_ids" not in e for e in rest)  # only when asked


def test_a_continuation_the_server_cannot_stream_exactly_is_a_400(server):
    resume = {"token_ids": [504, 3264], "sent_chars": 0}
    for body in (
        {**BODY, "stream": False, "stream_options": None},  # nothing to splice into
        {**BODY, "n": 2},  # one choice at a time
    ):
        r = httpx.post(
            f"{server.base_url}/v1/chat/completions",
            json={**body, "chatfleet_continue": resume},
            timeout=30,
        )
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] in ("chatfleet_continue", "continue_token_ids")


def test_a_continued_reply_goes_ahead_of_queued_requests(tmp_path):
    srv = start_server(tmp_path, "--max-num-seqs", "1")
    try:
        first_chunk: dict[str, float] = {}

        def run(name: str, body: dict) -> None:
            with httpx.stream(
                "POST", f"{srv.base_url}/v1/chat/completions", json=body, timeout=120
            ) as r:
                for line in r.iter_lines():
                    if line.startswith("data: ") and name not in first_chunk:
                        first_chunk[name] = time.monotonic()

        busy = threading.Thread(target=run, args=("busy", {**BODY, "max_tokens": 120}))
        busy.start()
        while "busy" not in first_chunk:
            time.sleep(0.01)
        new = threading.Thread(target=run, args=("new", {**BODY, "max_tokens": 8}))
        new.start()
        time.sleep(0.3)  # queued behind `busy`
        resume = {"token_ids": [504, 3264], "sent_chars": 0}
        continued = {**BODY, "max_tokens": 8, "chatfleet_continue": resume}
        cont = threading.Thread(target=run, args=("continued", continued))
        cont.start()
        for t in (busy, new, cont):
            t.join(120)
        assert first_chunk["continued"] < first_chunk["new"]
    finally:
        srv.stop()


def test_a_continued_completion_counts_text_offsets_from_the_replys_start(server):
    """Offsets of a resumed stream go on from where the first replica's left off."""
    body = {
        "prompt": "Lighthouses are",
        "max_tokens": 30,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "logprobs": 1,
    }

    def events(extra: dict) -> list[dict]:
        url = f"{server.base_url}/v1/completions"
        with httpx.stream("POST", url, json={**body, **extra}, timeout=120) as r:
            assert r.status_code == 200, r.read()
            lines = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
        return [json.loads(line) for line in lines[:-1]]

    def offsets(evs: list[dict]) -> list[int]:
        choices = [c for e in evs for c in e["choices"] if c.get("logprobs")]
        return [o for c in choices for o in c["logprobs"]["text_offset"]]

    whole = events({"chatfleet_token_ids": True})
    ids = [t for e in whole for t in e.get("chatfleet_token_ids", [])]
    sent = len("".join(c["text"] for e in whole[:10] for c in e["choices"]))
    rest = events({"chatfleet_continue": {"token_ids": ids[:12], "sent_chars": sent}})
    assert offsets(rest) == offsets(whole)[12:]
