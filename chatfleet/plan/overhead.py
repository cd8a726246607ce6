"""Serving time outside the engine's step work, as the simulator adds it.

A step model is calibrated on `LLMEngine.step()` alone. A server does more around it: per
request HTTP, the router hop, chat template and tokenization; per step and per streamed token
the hand-off to the event loop, SSE encoding, the router's relay and the client's parsing. On
a machine whose cores the replicas share with that work (or a GIL they share with their own
event loop), it does not only delay tokens: it stretches the steps. So the per-step and
per-token parts are added to each simulated step's duration, the per-request part to each
request's way in:

    request:  sent --ingress_s--> in the engine's queue
    step:     step_model(shape) + step_s + sampled_token_s * rows sampled
                                + prefill_token_s * prefill tokens
    token:    sampled --egress_s--> at the client

`http_calibrate.measure_serving_overhead` measures the terms from outside (they may be
negative: the correction of an in-process model to in-server steps) and stores them in the
step model's JSON under `serving_overhead`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from chatfleet.plan.step_model import StepShape

META_KEY = "serving_overhead"


@dataclass(frozen=True)
class ServingOverhead:
    """Latency and step time outside `LLMEngine.step()`; all seconds."""

    ingress_s: float = 0.0  # sent -> in the engine's queue: HTTP, router hop, template, tokenize
    egress_s: float = 0.0  # sampled -> at the client, when not already in the step terms
    step_s: float = 0.0  # every step: loop turn, output hand-off
    sampled_token_s: float = 0.0  # every sampled row: detokenize, SSE, relay, client parse
    prefill_token_s: float = 0.0  # every prefill token: in-server vs in-process prefill

    def step_extra_s(self, shape: StepShape) -> float:
        """What a step of this shape takes in a server beyond the step model's time."""
        return (
            self.step_s
            + self.sampled_token_s * shape.num_sampled
            + self.prefill_token_s * shape.num_prefill_tokens
        )

    def to_meta(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_meta(meta: dict[str, Any]) -> ServingOverhead:
        """The overhead stored with a step model (none if it was never measured)."""
        names = {f.name for f in dataclasses.fields(ServingOverhead)}
        stored = meta.get(META_KEY, {})
        return ServingOverhead(**{k: float(v) for k, v in stored.items() if k in names})
