"""A stream still waiting in the queue (or in a long prefill) is not silent: it gets its
headers and `: keep-alive` comments every --keep-alive, so proxies do not cut it, and its
reply is unchanged once it runs."""

from __future__ import annotations

import threading
import time

import httpx

from tests.server_process import start_server

KEEP_ALIVE_S = 0.3
BODY = {
    "model": "SmolLM2-135M-Instruct",
    "messages": [{"role": "user", "content": "Count to ten."}],
    "temperature": 0,
    "stream": True,
}


def _stream(base_url: str, max_tokens: int, lines: list[tuple[float, str]]) -> None:
    body = {**BODY, "max_tokens": max_tokens, "ignore_eos": True}
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line:
                lines.append((time.monotonic(), line))


def test_a_queued_stream_gets_keep_alives_before_its_first_token(tmp_path):
    server = start_server(
        tmp_path, "--max-num-seqs", "1", "--keep-alive", str(KEEP_ALIVE_S), "--max-queue-len", "4"
    )
    try:
        ahead: list[tuple[float, str]] = []
        blocker = threading.Thread(target=_stream, args=(server.base_url, 400, ahead))
        blocker.start()
        deadline = time.monotonic() + 60
        while not any(line.startswith("data: {") for _, line in ahead):
            assert time.monotonic() < deadline and blocker.is_alive()
            time.sleep(0.01)
        queued: list[tuple[float, str]] = []
        _stream(server.base_url, 8, queued)
        blocker.join(120)
        ahead_done = ahead[-1][0]
        first_data = next(t for t, line in queued if line.startswith("data: {"))
        assert ahead_done <= first_data  # it did wait for the one slot
        waiting = [line for t, line in queued if t < first_data]
        assert waiting and all(line == ": keep-alive" for line in waiting)
        assert queued[0][0] < ahead_done  # its first bytes came while the other still ran
        assert queued[-1][1] == "data: [DONE]"
        tokens = [line for _, line in queued if '"content"' in line and '"delta"' in line]
        assert len(tokens) >= 8
    finally:
        server.stop()
