"""Offline API: `LLM(model=None).generate(prompts, params)` and `LLM.chat(messages, params)`."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from chatfleet.config.engine_config import EngineConfig
from chatfleet.engine.llm_engine import LLMEngine
from chatfleet.outputs import RequestOutput
from chatfleet.sampling_params import SamplingParams


class LLM:
    """Runs the engine to completion over a batch of prompts (continuous batching inside)."""

    def __init__(self, model: str | None = None, attention: str = "auto", **config: Any) -> None:
        self.engine = LLMEngine(EngineConfig(model=model, **config), attention)
        self._ids = itertools.count()

    @classmethod
    def from_config(cls, config: EngineConfig, attention: str = "auto") -> LLM:
        return cls(attention=attention, **{f.name: getattr(config, f.name) for f in fields(config)})

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def generate(
        self,
        prompts: str | list[int] | Sequence[str | list[int]],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> list[RequestOutput]:
        """One RequestOutput per prompt, in input order. A prompt is text or token ids."""
        batch: list[str | list[int]]
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            batch = [prompts]  # type: ignore[list-item]
        else:
            batch = list(prompts)  # type: ignore[arg-type]
        params = params or SamplingParams()
        param_list = [params] * len(batch) if isinstance(params, SamplingParams) else params
        if len(param_list) != len(batch):
            raise ValueError("need one SamplingParams per prompt")
        ids = []
        for prompt, p in zip(batch, param_list, strict=True):
            request_id = str(next(self._ids))
            self.engine.add_request(request_id, prompt, p)
            ids.append(request_id)
        finished: dict[str, RequestOutput] = {}
        while self.engine.has_unfinished_requests():
            for out in self.engine.step():
                if out.finished:
                    finished[out.request_id] = out
        return [finished[i] for i in ids]

    def chat(
        self,
        messages: list[dict[str, Any]] | list[list[dict[str, Any]]],
        params: SamplingParams | None = None,
    ) -> list[RequestOutput]:
        """Apply the model's chat template to one conversation (or a list) and generate."""
        conversations = messages if messages and isinstance(messages[0], list) else [messages]
        prompts = [self.tokenizer.apply_chat_template(c) for c in conversations]
        return self.generate(prompts, params)
