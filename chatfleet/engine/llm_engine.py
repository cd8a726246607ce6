"""Synchronous engine: add_request / step / abort. Owns tokenizer, scheduler and runner.

step() is the whole data flow of one iteration:
    scheduler.schedule() -> runner.execute() -> scheduler.update_from_output() -> detokenize
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
import time
from dataclasses import dataclass
from typing import cast

from chatfleet.config.engine_config import EngineConfig
from chatfleet.engine.detokenizer import IncrementalDetokenizer
from chatfleet.engine.kv_cache_manager import KVCacheManager
from chatfleet.engine.request import Request, RequestStatus, check_fits
from chatfleet.engine.scheduler import EngineCoreOutput, Scheduler
from chatfleet.engine.step_trace import StepTrace, scheduled_seqs
from chatfleet.errors import InvalidRequestError
from chatfleet.model.attention import kv_format
from chatfleet.model.runner import ModelRunner, RunnerInfo
from chatfleet.modelfile.tokenizer import Tokenizer
from chatfleet.outputs import CompletionOutput, RequestOutput
from chatfleet.sampling_params import SamplingParams
from chatfleet.step import SchedulerOutput, TokenMasks
from chatfleet.structured.matcher import GrammarCompiler, GrammarMatcher

logger = logging.getLogger("chatfleet.engine")


@dataclass
class _ParentState:
    """A user request: n child Requests sharing one prompt (and its KV blocks)."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    children: list[Request]
    detokenizers: list[IncrementalDetokenizer]
    completions: list[CompletionOutput]
    # A continued reply's tokens and their text so far: the start of its first delta.
    carried_ids: list[int] = dataclasses.field(default_factory=list)
    carried_text: str = ""

    @property
    def finished(self) -> bool:
        return all(c.finished for c in self.completions)


def _loaded_summary(model: str | None, info: RunnerInfo, max_model_len: int) -> str:
    """What was loaded, for the log: a user sees at once whether it is the model they meant."""
    c = info.model_config
    kv_bytes = kv_format.bytes_per_token(
        c.num_layers, c.num_kv_heads, c.head_dim, info.kv_cache_dtype
    )
    stored = ", ".join(f"{n} {t}" for t, n in sorted(info.stored_type_counts.items()))
    return (
        f"loaded {model or 'the default model'}: {c.family}, "
        f"{info.num_parameters / 1e6:.1f}M parameters, {c.num_layers} layers, "
        f"{c.num_heads}/{c.num_kv_heads} heads of {c.head_dim}; tensors {stored}; "
        f"runs as {info.weight_format} on {info.device.type}, attention {info.attention}; "
        f"KV cache {kv_bytes} bytes a token ({str(info.kv_cache_dtype).removeprefix('torch.')}),"
        f" {info.num_blocks * info.block_size} tokens; context {max_model_len} tokens"
    )


def _masks_first(params: SamplingParams) -> bool:
    """A grammar row whose top-k / top-p / min-p must see the masked distribution."""
    return params.needs_truncation and not params.is_greedy


class LLMEngine:
    def __init__(self, config: EngineConfig | None = None, attention: str = "auto") -> None:
        config = config or EngineConfig()
        self.config = config
        self.tokenizer = Tokenizer.from_model_path(config.model)
        self.runner = ModelRunner(config, attention)
        info = self.runner.info
        self.model_config = info.model_config
        self.max_model_len = min(config.scheduler.max_model_len, info.model_config.max_context_len)
        self.kv_cache_manager = KVCacheManager(
            info.num_blocks, info.block_size, config.cache.enable_prefix_caching
        )
        self.scheduler = Scheduler(
            dataclasses.replace(config.scheduler, max_model_len=self.max_model_len),
            self.kv_cache_manager,
        )
        self.eos_token_ids = tuple(self.tokenizer.eos_token_ids)
        logger.info("%s", _loaded_summary(config.model, info, self.max_model_len))
        self._parents: dict[str, _ParentState] = {}
        self._child_to_parent: dict[str, tuple[_ParentState, int]] = {}
        self._trace = StepTrace(config.step_trace) if config.step_trace else None
        # NOTE: built in the background (a token trie of the whole vocabulary), so neither
        # the start-up nor the first constrained request waits for all of it. Not a daemon:
        # a process exiting while the build runs in native code would crash at shutdown.
        self._grammars: concurrent.futures.Future[GrammarCompiler] = concurrent.futures.Future()
        threading.Thread(target=self._build_grammars, name="chatfleet-grammars").start()

    # ---- requests ---------------------------------------------------------------------
    def validate_prompt(
        self, prompt_token_ids: list[int], params: SamplingParams, param: str = "prompt"
    ) -> None:
        """Raises a typed error when the request can never be served."""
        params.verify_for_model(self.model_config.vocab_size)
        num = len(prompt_token_ids)
        if num == 0:
            raise InvalidRequestError("the prompt is empty", param=param)
        if any(not 0 <= t < self.model_config.vocab_size for t in prompt_token_ids):
            raise InvalidRequestError("prompt token id outside the vocabulary", param=param)
        pool = self.kv_cache_manager.pool
        check_fits(
            num,
            params.max_tokens,
            self.max_model_len,
            self.runner.block_size,
            pool.num_blocks,
            param,
        )

    def add_request(
        self, request_id: str, prompt: str | list[int], params: SamplingParams, priority: int = 0
    ) -> None:
        """Tokenize (if text), validate and queue. Raises InvalidRequestError subclasses."""
        if request_id in self._parents:
            raise InvalidRequestError(f"duplicate request id {request_id}", param="request_id")
        text = prompt if isinstance(prompt, str) else None
        ids = self.tokenizer.encode_prompt(prompt) if isinstance(prompt, str) else list(prompt)
        self.validate_prompt(ids, params)
        grammar = (
            None if params.grammar is None else self._grammar_compiler().matcher(params.grammar)
        )
        state = _ParentState(request_id, text, ids, [], [], [])
        for index in range(params.n):
            child_params = params
            if params.n > 1:
                seed = None if params.seed is None else params.seed + index
                child_params = dataclasses.replace(params, n=1, seed=seed)
            child = Request(
                f"{request_id}#{index}" if params.n > 1 else request_id,
                ids,
                child_params,
                self.eos_token_ids,
                priority,
            )
            if grammar is not None:
                child.grammar = grammar if index == 0 else grammar.fork()
            detokenizer = IncrementalDetokenizer(
                self.tokenizer,
                ids,
                params.stop,
                params.include_stop_str_in_output,
                params.skip_special_tokens,
            )
            completion = CompletionOutput(
                index, logprobs=[] if params.logprobs is not None else None
            )
            if params.continue_token_ids:
                state.carried_text = _continue(child, detokenizer)
                state.carried_ids = list(params.continue_token_ids)
            state.children.append(child)
            state.detokenizers.append(detokenizer)
            state.completions.append(completion)
            self._child_to_parent[child.request_id] = (state, index)
        self._parents[request_id] = state
        for child in state.children:
            self.scheduler.add_request(child)

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """Abort a user request (all its choices); frees blocks at once. Unknown ids: None."""
        state = self._parents.get(request_id)
        if state is None:
            return None
        self.scheduler.finish_requests(
            [c.request_id for c in state.children], RequestStatus.FINISHED_ABORTED
        )
        for completion in state.completions:
            completion.delta_text, completion.delta_token_ids = "", []
            if completion.finish_reason is None:
                completion.finish_reason = "abort"
        self._forget(state)
        return self._make_output(state)

    def has_unfinished_requests(self) -> bool:
        return bool(self._parents)

    # ---- one iteration ----------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        start = time.monotonic() if self._trace is not None else 0.0
        scheduler_output = self.scheduler.schedule()
        scheduler_output.token_masks = self._start_masks(scheduler_output)
        seqs = scheduled_seqs(scheduler_output) if self._trace is not None else []
        runner_output = self.runner.execute(scheduler_output)
        core_outputs = self.scheduler.update_from_output(scheduler_output, runner_output)
        outputs = self._process(core_outputs)
        if self._trace is not None and seqs:
            more = self.has_unfinished_requests()
            self._trace.record(start, time.monotonic() - start, seqs, more)
            if not more:  # idle next: let readers see it all
                self._trace.flush()
        return outputs

    def close(self) -> None:
        """Flush and close the step trace, if any (the engine stays usable without it)."""
        if self._trace is not None:
            self._trace.close()
            self._trace = None
        if self._grammars.done() and self._grammars.exception() is None:
            self._grammars.result().close()

    def _build_grammars(self) -> None:
        try:
            self._grammars.set_result(
                GrammarCompiler(
                    self.tokenizer, self.model_config.vocab_size, self.config.num_threads
                )
            )
        except BaseException as e:  # raised to the first request that needs it
            self._grammars.set_exception(e)

    def _grammar_compiler(self) -> GrammarCompiler:
        return self._grammars.result()

    def _start_masks(self, out: SchedulerOutput) -> TokenMasks | None:
        """The grammar masks of this step's rows that truncate their distribution, filled while
        the forward pass runs; None if there are none. (Other grammar rows are checked after
        sampling, in the sampler: most sampled tokens are allowed, and a check costs far less
        than a mask.)"""
        requests = [cast(Request, s.request) for s in out.scheduled if s.samples]
        rows = [r for r in requests if r.grammar is not None and _masks_first(r.sampling_params)]
        if not rows:
            return None
        matchers = [cast(GrammarMatcher, r.grammar) for r in rows]
        return self._grammar_compiler().start_masks([r.request_id for r in rows], matchers)

    def _process(self, core_outputs: list[EngineCoreOutput]) -> list[RequestOutput]:
        touched: dict[str, _ParentState] = {}
        for out in core_outputs:
            state, _ = self._child_to_parent[out.request.request_id]
            if state.request_id not in touched:
                # Deltas describe this step only: clear those left by the previous one.
                for c in state.completions:
                    c.delta_text, c.delta_token_ids, c.delta_logprobs = "", [], []
                touched[state.request_id] = state
        for out in core_outputs:
            state, index = self._child_to_parent[out.request.request_id]
            self._apply(state, index, out)
        results = []
        for state in touched.values():
            results.append(self._make_output(state))
            if state.finished:
                self._forget(state)
        return results

    def _apply(self, state: _ParentState, index: int, out: EngineCoreOutput) -> None:
        completion, detok = state.completions[index], state.detokenizers[index]
        delta, matched = detok.update(out.new_token_ids)
        delta, state.carried_text = state.carried_text + delta, ""
        new_ids, state.carried_ids = state.carried_ids + out.new_token_ids, []
        finished = out.finished
        request = out.request
        if matched is not None and not finished:
            self.scheduler.finish_requests([request.request_id], RequestStatus.FINISHED_STOPPED)
            request.stop_reason = matched
            finished = True
        elif matched is not None:
            request.stop_reason = matched
        if finished and matched is None:
            delta += detok.flush()
        completion.text = detok.output_text
        completion.token_ids.extend(new_ids)
        completion.delta_text, completion.delta_token_ids = delta, list(new_ids)
        completion.delta_logprobs = list(out.new_logprobs)
        if completion.logprobs is not None:
            completion.logprobs.extend(out.new_logprobs)
        if finished:
            completion.finish_reason = request.status.finish_reason
            completion.stop_reason = request.stop_reason
            completion.error = request.error

    def _make_output(self, state: _ParentState) -> RequestOutput:
        # The first choice computes the prompt; the others reuse its blocks.
        cached = max(state.children[0].num_cached_tokens, 0)
        completions = [
            dataclasses.replace(
                c,
                token_ids=list(c.token_ids),
                logprobs=None if c.logprobs is None else list(c.logprobs),
            )
            for c in state.completions
        ]
        first = state.children[0]
        queue_time = (
            None
            if first.first_scheduled_time is None
            else first.first_scheduled_time - first.arrival_time
        )
        return RequestOutput(
            state.request_id,
            state.prompt,
            state.prompt_token_ids,
            completions,
            state.finished,
            cached,
            queue_time,
        )

    def _forget(self, state: _ParentState) -> None:
        self._parents.pop(state.request_id, None)
        for child in state.children:
            self._child_to_parent.pop(child.request_id, None)


def _continue(child: Request, detokenizer: IncrementalDetokenizer) -> str:
    """Starts `child` after its continued tokens, as if it had generated them: they are its
    output (the next token is sampled after them), its detokenizer has read them (a stop
    string or a character split across the seam is seen whole) and its grammar has accepted
    them. Returns their text so far, which the first delta carries."""
    ids = child.sampling_params.continue_token_ids
    if child.grammar is not None and not all(child.grammar.accept(t) for t in ids):
        raise InvalidRequestError(
            "continue_token_ids: the grammar does not allow them", param="continue_token_ids"
        )
    text, matched = detokenizer.update(ids)
    if matched is not None:
        raise InvalidRequestError(
            f"continue_token_ids: they already end at the stop string {matched!r}",
            param="continue_token_ids",
        )
    child.token_ids.extend(ids)
    return text
