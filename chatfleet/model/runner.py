"""ModelRunner: execute(SchedulerOutput) -> ModelRunnerOutput. Owns the weights, the KV cache
tensors and per-request sampling generators; knows nothing of the scheduler or block pool.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from dataclasses import dataclass

import torch

from chatfleet.config.engine_config import CacheConfig, EngineConfig, ModelConfig
from chatfleet.model import kernels
from chatfleet.model.attention import (
    BACKENDS,
    AttentionBackend,
    kv_format,
    load_kernel,
    resolve_backend,
)
from chatfleet.model.forward_context import ForwardContext
from chatfleet.model.fused_decode import FusedDecode, choose_max_rows
from chatfleet.model.linear import BlockInt8Linear, resolve_weight_format
from chatfleet.model.loader import load_weights
from chatfleet.model.matmul_plan import (
    BUCKETS,
    MatmulPlan,
    candidates,
    load_or_measure,
    plan_key,
)
from chatfleet.model.models.llama import LlamaForCausalLM
from chatfleet.model.sampler import Sampler, SamplingRow
from chatfleet.outputs import TokenLogprobs
from chatfleet.step import ModelRunnerOutput, SchedulerOutput


def _return_freed_memory() -> None:
    """Give the heap that building the model freed back to the OS (glibc keeps it otherwise,
    and the process holds it for nothing)."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


@dataclass(frozen=True)
class RunnerInfo:
    """Facts found at start-up, returned to the engine (never written into config)."""

    model_config: ModelConfig
    num_blocks: int
    block_size: int
    weight_format: str
    dtype: torch.dtype
    kv_cache_dtype: torch.dtype
    device: torch.device
    num_parameters: int
    attention: str
    stored_type_counts: dict[str, int]  # tensors per type in the model file


def kv_block_bytes(model: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
    per_token = kv_format.bytes_per_token(
        model.num_layers, model.num_kv_heads, model.head_dim, dtype
    )
    return block_size * per_token


_KV_DTYPES = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "int8": torch.int8,
}


def resolve_kv_cache_dtype(name: str, device: torch.device, compute: torch.dtype) -> torch.dtype:
    """'auto' -> fp16 on CPU when the paged kernel (which widens it in registers) builds, else
    the compute dtype. fp16 keeps 11 bits of mantissa: K/V rounding moves logits by ~1e-3."""
    if name != "auto":
        return _KV_DTYPES[name]
    if device.type == "cpu" and compute == torch.float32 and load_kernel() is not None:
        return torch.float16
    return compute


class ModelRunner:
    # Set where int8 layers have a kernel to choose (CPU): bf16 where batch invariance is
    # off, AMX tiles where the CPU has them.
    matmul_plan: MatmulPlan | None = None

    def __init__(self, config: EngineConfig, attention: str = "auto") -> None:
        self.device = torch.device(config.device)
        fmt = resolve_weight_format(config.weight_format, self.device)
        if self.device.type == "cpu":
            # NOTE: torch gets every thread too: with the int8 kernels' fusions few small torch
            # ops are left to contend, and prefill attention (SDPA) needs every core.
            torch.set_num_threads(config.num_threads)
            kernels.set_num_threads(config.num_threads)
        elif self.device.type == "cuda":
            # NOTE: cuDNN's SDPA builds a graph per new shape, milliseconds of CPU each; decode
            # shapes change every step, so flash / mem-efficient kernels are far faster here.
            torch.backends.cuda.enable_cudnn_sdp(False)
        model_config, raw = load_weights(config.model)
        self.dtype = torch.bfloat16 if fmt == "bf16" else torch.float32
        self.model = LlamaForCausalLM(model_config, raw, fmt, self.dtype, self.device).eval()
        _return_freed_memory()
        self.kv_dtype = resolve_kv_cache_dtype(config.cache.kv_cache_dtype, self.device, self.dtype)
        self.attention = resolve_backend(
            attention,
            self.device,
            self.kv_dtype,
            self.dtype,
            model_config.head_dim,
            model_config.num_heads // model_config.num_kv_heads,
        )
        self.attn: AttentionBackend = BACKENDS[self.attention](
            model_config.num_heads, model_config.num_kv_heads, model_config.head_dim
        )
        if config.fused_decode:
            self.model.fused_decode = FusedDecode.build(self.model, self.attention)
        if fmt == "int8" and self.device.type == "cpu":
            allowed = candidates(config.batch_invariant)
            if len(allowed) > 1:  # a choice to measure
                self._apply_matmul_plan(config.num_threads, allowed)
        self.block_size = config.cache.block_size
        num_blocks = self._num_blocks(model_config, config.cache)
        self.kv_caches = self._allocate_kv_caches(model_config, num_blocks)
        self._time_fused_decode(min(config.scheduler.max_num_seqs, num_blocks))
        self.info = RunnerInfo(
            model_config,
            num_blocks,
            self.block_size,
            fmt,
            self.dtype,
            self.kv_dtype,
            self.device,
            raw.num_elements(),
            self.attention,
            raw.stored_type_counts(),
        )
        self.sampler = Sampler()
        self._generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self._generators: dict[str, torch.Generator] = {}

    def _apply_matmul_plan(self, num_threads: int, allowed: tuple[str, ...]) -> None:
        """Per decoder layer and row bucket, the fastest of the kernels `allowed`
        (matmul_plan.py)."""
        parts = ("qkv", "o", "gate_up", "down")
        linears = [getattr(layer, part) for layer in self.model.layers for part in parts]
        plan = load_or_measure(linears, num_threads, allowed)
        for linear in linears:
            linear.use_plan(plan.choices[plan_key(linear)])
        head = self.model.lm_head
        exact = tuple(k for k in allowed if k != "bf16")  # the logits keep their bits
        if isinstance(head, BlockInt8Linear) and len(exact) > 1:
            head.use_plan(load_or_measure([head], num_threads, exact).choices[plan_key(head)])
        if self.model.fused_decode is not None:  # until choose_max_rows measures
            self.model.fused_decode.follow_tiles()
            self.model.fused_decode.max_rows = plan.min_rows("bf16")
        self.matmul_plan = plan

    def _allocate_kv_caches(self, model: ModelConfig, num_blocks: int) -> list[torch.Tensor]:
        shape = kv_format.cache_shape(
            num_blocks, self.block_size, model.num_kv_heads, model.head_dim, self.kv_dtype
        )
        # Zero-filled: padded slots are masked out of attention, but 0 * NaN garbage is NaN.
        return [
            torch.zeros(shape, dtype=self.kv_dtype, device=self.device)
            for _ in range(model.num_layers)
        ]

    def _time_fused_decode(self, most_rows: int) -> None:
        """With a plan: up to which row count decode steps keep the fused call, measured from
        the plan's first bf16 bucket up to a full decode batch (fused_decode.choose_max_rows)."""
        fused = self.model.fused_decode
        if self.matmul_plan is None or fused is None or fused.max_rows is None:
            return
        candidates = [b for b in BUCKETS if fused.max_rows <= b <= most_rows]
        choose_max_rows(self.model, self.kv_caches, self.attn, self.block_size, candidates)

    def _num_blocks(self, model: ModelConfig, cache: CacheConfig) -> int:
        if cache.num_blocks_override is not None:
            return cache.num_blocks_override
        return max(
            1, cache.kv_cache_memory_bytes // kv_block_bytes(model, cache.block_size, self.kv_dtype)
        )

    def build_context(self, out: SchedulerOutput) -> tuple[torch.Tensor, ForwardContext, list]:
        """Flatten the step into tensors; decodes first so attention can batch them."""
        items = sorted(out.scheduled, key=lambda s: s.num_new_tokens != 1)
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        for s in items:
            start, end = s.start, s.start + s.num_new_tokens
            input_ids += s.request.token_ids[start:end]
            positions += range(start, end)
            slots += [s.block_ids[p // bs] * bs + p % bs for p in range(start, end)]
        max_blocks = max(len(s.block_ids) for s in items)
        tables = [s.block_ids + [0] * (max_blocks - len(s.block_ids)) for s in items]
        dev = self.device
        ctx = ForwardContext(
            positions=torch.tensor(positions, dtype=torch.long, device=dev),
            slot_mapping=torch.tensor(slots, dtype=torch.long, device=dev),
            block_tables=torch.tensor(tables, dtype=torch.long, device=dev),
            query_lens=[s.num_new_tokens for s in items],
            context_lens=[s.start for s in items],
            num_decodes=sum(1 for s in items if s.num_new_tokens == 1),
            prompt_lens=[len(s.request.prompt_token_ids) for s in items],
        )
        ctx.attn_metadata = self.attn.build_metadata(ctx, bs)
        return torch.tensor(input_ids, dtype=torch.long, device=dev), ctx, items

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput) -> ModelRunnerOutput:
        for request_id in out.finished_request_ids:
            self._generators.pop(request_id, None)
        if out.is_empty:
            return ModelRunnerOutput({})
        input_ids, ctx, items = self.build_context(out)
        hidden = self.model(input_ids, ctx, self.kv_caches, self.attn)
        ends = torch.tensor(ctx.query_lens, device=self.device).cumsum(0) - 1
        sampling = [i for i, s in enumerate(items) if s.samples]
        if not sampling:
            return ModelRunnerOutput({})
        logits = self.model.compute_logits(hidden[ends[sampling]])  # [N, vocab]
        # The grammar masks were filled while the forward pass ran.
        masks = out.token_masks.wait() if out.token_masks is not None else {}
        rows = [self._sampling_row(items[i].request, masks) for i in sampling]
        result = self.sampler(logits, rows, self._generator)
        ids = [items[i].request.request_id for i in sampling]
        sampled = dict(zip(ids, result.token_ids, strict=True))
        logprobs = {}
        if result.logprobs is not None:
            for j, row in enumerate(rows):
                if row.params.logprobs is not None:
                    logprobs[ids[j]] = _token_logprobs(
                        result.logprobs[j], result.token_ids[j], row.params.logprobs
                    )
        return ModelRunnerOutput(sampled, logprobs)

    def _sampling_row(self, request, masks: dict[str, torch.Tensor]) -> SamplingRow:
        params = request.sampling_params
        generator = None
        if params.seed is not None and not params.is_greedy:
            generator = self._generators.get(request.request_id)
            if generator is None:
                generator = torch.Generator(device=self.device).manual_seed(params.seed)
                # A continued reply (SamplingParams.continue_token_ids) resumes the sequence
                # where it was: the sampler draws one number per sampled token.
                for _ in range(request.num_output_tokens):
                    torch.rand(1, dtype=torch.float64, generator=generator, device=self.device)
                self._generators[request.request_id] = generator
        banned: list[int] = []
        if request.num_output_tokens < params.min_tokens:
            banned = list(params.stop_token_ids) + (
                [] if params.ignore_eos else list(request.eos_token_ids)
            )
        bitmask = masks.get(request.request_id)
        return SamplingRow(
            params,
            request.prompt_token_ids,
            request.output_token_ids,
            generator,
            banned,
            bitmask,
            request.grammar if bitmask is None else None,
        )


def _token_logprobs(row: torch.Tensor, token_id: int, k: int) -> TokenLogprobs:
    top: list[tuple[int, float]] = []
    if k:
        values, indices = row.topk(k)
        top = list(zip(indices.tolist(), values.tolist(), strict=True))
    return TokenLogprobs(token_id, float(row[token_id]), top)
