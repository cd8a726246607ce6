"""Drive sessions against a server: closed loop (fixed concurrency) or open loop (arrivals).

Open loop follows vLLM's serving benchmark: inter-arrival gaps are gamma distributed with
shape = burstiness and scale = 1 / (rate * burstiness), so the mean gap is 1 / rate for any
burstiness; burstiness 1 is a Poisson process, below 1 burstier, above 1 more regular.
A concurrency limit, if given, caps the sessions in flight in either mode.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

import httpx
import numpy as np

from chatfleet.bench.client import ChatClient, ClientConfig, Exchange, resolve_model
from chatfleet.bench.record import RequestRecord
from chatfleet.bench.workload import Session, request_for

CONNECT_TIMEOUT_S = 10.0


class ChatTokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def apply_chat_template(self, messages: list[dict[str, Any]]) -> list[int]: ...


@dataclass(frozen=True)
class LoadConfig:
    concurrency: int | None = None  # sessions in flight at most; None: no limit
    request_rate: float = math.inf  # sessions started per second; inf: all at once
    burstiness: float = 1.0
    seed: int = 0


def arrival_times_s(num: int, request_rate: float, burstiness: float, seed: int) -> list[float]:
    """When each of `num` arrivals happens, in seconds after the first (which is at 0)."""
    if num <= 0:
        return []
    if math.isinf(request_rate):
        return [0.0] * num
    rng = np.random.default_rng(seed)
    gaps = rng.gamma(shape=burstiness, scale=1.0 / (request_rate * burstiness), size=num - 1)
    return [0.0, *np.cumsum(gaps).tolist()]


class Progress:
    """One stderr line rewritten in place: requests done, failures, elapsed time.

    Rewritten only on a terminal; a log file gets the final line alone.
    """

    def __init__(self, total: int, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.total, self.stream, self.enabled = total, stream or sys.stderr, enabled
        self.is_live = enabled and self.stream.isatty()
        self.num_done = self.num_failed = 0
        self.start = time.perf_counter()

    def update(self, record: RequestRecord) -> None:
        self.num_done += 1
        self.num_failed += not record.is_success
        if self.is_live:
            self._write("\r")

    def close(self) -> None:
        if self.enabled:
            self._write("\r" if self.is_live else "")
            self.stream.write("\n")
            self.stream.flush()

    def _write(self, prefix: str) -> None:
        elapsed = time.perf_counter() - self.start
        self.stream.write(
            f"{prefix}bench: {self.num_done}/{self.total} requests, "
            f"{self.num_failed} failed, {elapsed:.1f} s"
        )
        self.stream.flush()


async def run_load(
    sessions: list[Session], client: ChatClient, load: LoadConfig, progress: Progress
) -> list[Exchange]:
    """Play every session; exchanges in completion order.

    A session's turns run one after another; a failed turn ends its session, since the next
    turn's history would need the answer that never came.
    """
    exchanges: list[Exchange] = []
    limit = asyncio.Semaphore(load.concurrency) if load.concurrency else None
    run_start = time.perf_counter()

    async def play(index: int, session: Session) -> None:
        answers: list[str] = []
        for turn_index in range(len(session.turns)):
            request = request_for(session, index, turn_index, answers)
            exchange = await client.send(request, run_start)
            exchanges.append(exchange)
            progress.update(exchange.record)
            if not exchange.record.is_success:
                return
            answers.append(exchange.output_text)

    async def admit(index: int, session: Session) -> None:
        if limit is None:
            await play(index, session)
            return
        async with limit:
            await play(index, session)

    times = arrival_times_s(len(sessions), load.request_rate, load.burstiness, load.seed)
    tasks = []
    for index, (session, at_s) in enumerate(zip(sessions, times, strict=True)):
        delay = run_start + at_s - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(admit(index, session)))
    await asyncio.gather(*tasks)
    return exchanges


async def run_benchmark(
    sessions: list[Session], client_config: ClientConfig, load: LoadConfig, show_progress: bool
) -> tuple[str | None, list[Exchange]]:
    """(model sent, exchanges); raises httpx.HTTPError only if the server cannot be reached."""
    timeout = httpx.Timeout(client_config.timeout_s, connect=CONNECT_TIMEOUT_S)
    # NOTE: no connection cap: queueing inside the client would be counted as server latency.
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as http:
        model = await resolve_model(http, client_config)
        client = ChatClient(dataclasses.replace(client_config, model=model), http)
        progress = Progress(sum(len(s.turns) for s in sessions), enabled=show_progress)
        try:
            exchanges = await run_load(sessions, client, load, progress)
        finally:
            progress.close()
    return model, exchanges


def fill_token_counts(
    exchanges: list[Exchange], tokenizer: Callable[[], ChatTokenizer]
) -> list[RequestRecord]:
    """Records in start order; successes without server usage are counted with the tokenizer.

    NOTE: the tokenizer is the local model's; against a server running another model the
    counts are estimates, which is why each record says where its counts came from.
    """
    records = []
    for ex in sorted(exchanges, key=lambda e: (e.record.start_s, e.record.session_index)):
        record = ex.record
        if record.is_success and record.token_count_source is None:
            tok = tokenizer()
            record = dataclasses.replace(
                record,
                prompt_tokens=len(tok.apply_chat_template(ex.request.messages)),
                completion_tokens=len(tok.encode(ex.output_text)),
                token_count_source="tokenizer",
            )
        records.append(record)
    return records
