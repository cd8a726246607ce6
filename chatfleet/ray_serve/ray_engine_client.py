"""RayEngineClient: the EngineClient the HTTP server is written against, over a Serve handle.

    generate() --GenerateCall--> handle (ChatfleetRequestRouter picks a replica) --> replica
       ^ the replica died / was unreachable before the first output: call again (bounded)
       + after the first output: ReplicaFailedError, which the server sends as an SSE error

Retries go through the request router again; it has been told the replica died or is
unavailable (Serve calls its on_replica_actor_died / _unavailable hooks), so it avoids it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ray.exceptions import RayError, RayTaskError
from ray.serve.exceptions import RayServeException

from chatfleet.engine.engine_client import EngineStats
from chatfleet.errors import ChatfleetError, EngineDeadError
from chatfleet.http.http_errors import NoReplicaError, ReplicaFailedError
from chatfleet.modelfile.tokenizer import Tokenizer
from chatfleet.outputs import RequestOutput
from chatfleet.ray_serve.calls import ROUTE_KEYS, GenerateCall
from chatfleet.sampling_params import SamplingParams

logger = logging.getLogger("chatfleet.ray")


@dataclass(frozen=True)
class RetryConfig:
    max_attempts: int = 3  # replicas tried per request before its first output
    retry_deadline_s: float = 30.0  # no new attempt starts after this long
    backoff_s: float = 0.2  # before a retry: Serve may not have replaced the replica yet
    max_resumptions: int = 3  # times a stream may continue on another replica mid-way


class _Seam:
    """A stream continued on another replica after its own failed mid-way: the outputs
    after the seam, as if one replica had made them all (the continued reply's first output
    carries the text and ids of the whole reply so far; only what is new is passed on)."""

    def __init__(self) -> None:
        self.started = False
        self.resumptions = 0
        self.token_ids: list[int] = []  # the reply's so far
        self.sent_chars = 0  # of its text, passed on
        self.skip_ids = self.skip_chars = 0  # of the next outputs: had before the seam

    def splice(self, out: RequestOutput) -> RequestOutput:
        self.started = True
        if len(out.outputs) != 1:  # n > 1: never resumed
            return out
        c = out.outputs[0]
        if self.skip_ids or self.skip_chars:
            cut = min(self.skip_chars, len(c.delta_text))
            self.skip_chars -= cut
            c.delta_text = c.delta_text[cut:]
            c.delta_token_ids = c.delta_token_ids[self.skip_ids :]
            self.skip_ids = 0
        self.token_ids += c.delta_token_ids
        self.sent_chars += len(c.delta_text)
        return out

    def continuation(self, call: GenerateCall) -> GenerateCall:
        if not self.token_ids:  # nothing of the reply was passed on: the request as it was
            return call
        self.skip_ids, self.skip_chars = len(self.token_ids), self.sent_chars
        params = dataclasses.replace(call.params, continue_token_ids=list(self.token_ids))
        return dataclasses.replace(call, params=params, priority=-1)  # ahead of new requests


def _user_error(e: BaseException) -> ChatfleetError | None:
    """The replica's typed error if it refused the request itself (bad input), else None.

    An EngineDeadError is not the request's fault: another replica may serve it."""
    cause = e.cause if isinstance(e, RayTaskError) else e
    if isinstance(cause, ChatfleetError) and not isinstance(cause, EngineDeadError):
        return cause
    return None


class RayEngineClient:
    """Implements engine.engine_client.EngineClient; built in the ingress replica."""

    def __init__(
        self,
        handle: Any,
        tokenizer: Tokenizer,
        max_model_len: int,
        max_num_seqs: int,
        retry: RetryConfig,
    ) -> None:
        self.handle = handle.options(stream=True)
        self.tokenizer = tokenizer
        self._max_model_len = max_model_len
        self._max_num_seqs = max_num_seqs
        self.retry = retry
        self._ids = itertools.count()
        self._streams: dict[str, Any] = {}  # request_id -> DeploymentResponseGenerator

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    @property
    def max_num_seqs(self) -> int:
        """The fleet's: every replica's running limit, at the most replicas there can be."""
        return self._max_num_seqs

    @property
    def is_dead(self) -> bool:
        return False  # replicas die and are replaced; the ingress itself stays up

    async def generate(
        self,
        prompt: str | list[int],
        params: SamplingParams,
        request_id: str | None = None,
        priority: int = 0,
    ) -> AsyncIterator[RequestOutput]:
        """Streams one request from a replica; retries on another replica while nothing has
        been yielded. Raises the replica's typed error for bad input, ReplicaFailedError if
        the replica failed mid-stream, NoReplicaError (503) when no attempt could start."""
        call = GenerateCall(
            prompt, params, request_id or f"ray-{next(self._ids)}", priority, ROUTE_KEYS.get()
        )
        deadline = time.monotonic() + self.retry.retry_deadline_s
        last: BaseException | None = None
        seam = _Seam()
        attempt = 0
        while attempt < self.retry.max_attempts + self.retry.max_resumptions:
            if attempt and (time.monotonic() > deadline):
                break
            if attempt:
                await asyncio.sleep(self.retry.backoff_s)
            attempt += 1
            stream = self.handle.generate.remote(call)
            self._streams[call.request_id] = stream
            finished = False
            try:
                async for out in stream:
                    finished = out.finished
                    yield seam.splice(out)
                return
            except (RayError, RayServeException) as e:
                if (user_error := _user_error(e)) is not None:
                    raise user_error from None
                last = e
                if seam.started:
                    if not self._resumable(params, seam):
                        logger.warning("replica failed mid-stream of %s: %r", call.request_id, e)
                        raise ReplicaFailedError("the replica failed mid-stream") from e
                    seam.resumptions += 1
                    call = seam.continuation(call)
                    deadline = time.monotonic() + self.retry.retry_deadline_s
                logger.warning("attempt %d of %s failed: %r", attempt, call.request_id, e)
            finally:
                self._streams.pop(call.request_id, None)
                if not finished:
                    stream.cancel()  # the client left, or the attempt failed: stop the replica
        if seam.started:
            raise ReplicaFailedError(f"no replica could resume the stream: {last!r}")
        raise NoReplicaError(f"no replica could serve the request: {last!r}", retry_after_s=1)

    def _resumable(self, params: SamplingParams, seam: _Seam) -> bool:
        """As the HTTP router's (router/stream_ledger.py): one choice, within the budget, and
        no seeded sampling under a grammar (whose draws are not one per token)."""
        seeded = params.seed is not None and not params.is_greedy
        return (
            params.n == 1
            and seam.resumptions < self.retry.max_resumptions
            and not (seeded and params.grammar is not None)
        )

    async def abort(self, request_id: str) -> None:
        stream = self._streams.get(request_id)
        if stream is not None:
            stream.cancel()

    def check_health(self, max_stall_s: float = 30.0) -> None:
        """The ingress is healthy while it runs; Serve health-checks each replica itself."""

    async def get_stats(self) -> EngineStats:
        """Routing stats are per replica (RayReplicaManager.stats); the ingress has none."""
        return EngineStats(0, 0, 0.0, 0, 0, 0)

    def shutdown(self, timeout_s: float = 5.0) -> None:
        for stream in list(self._streams.values()):
            stream.cancel()
