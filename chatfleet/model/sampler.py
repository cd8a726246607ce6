"""Batched sampling with per-request parameters.

Order of operations (like vLLM): raw logprobs -> penalties -> min_tokens mask -> logit bias ->
grammar mask -> greedy argmax or temperature -> top-k / top-p / min-p -> inverse-CDF sampling
with one uniform number per row. Seeded rows draw it from their own generator, so a seeded
request samples the same tokens whatever else is in the batch, and its generator has advanced
by exactly one draw per sampled token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from chatfleet.model import kernels
from chatfleet.sampling_params import SamplingParams


class LazyGrammar(Protocol):
    """A grammar checked after sampling: the mask is computed only for a refused token."""

    def allows(self, token_id: int) -> bool: ...

    def bitmask(self) -> torch.Tensor:
        """[ceil(vocab / 32)] int32, bit set = allowed."""
        ...


@dataclass
class SamplingRow:
    params: SamplingParams
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    generator: torch.Generator | None  # None: the runner's shared generator
    banned_token_ids: list[int]  # EOS / stop ids while fewer than min_tokens were produced
    bitmask: torch.Tensor | None = None  # [ceil(vocab / 32)] int32: the grammar's allowed ids
    grammar: LazyGrammar | None = None  # a grammar to check the sampled token against


@dataclass
class SamplerOutput:
    token_ids: list[int]
    logprobs: torch.Tensor | None  # [N, vocab] raw log-softmax, only if some row wants it


def apply_penalties(logits: torch.Tensor, rows: list[SamplingRow], idx: list[int]) -> None:
    """In place on logits[idx]: repetition (prompt + output), presence and frequency (output)."""
    vocab, device = logits.shape[1], logits.device
    for i in idx:
        p, row = rows[i].params, logits[i]
        out_ids = torch.tensor(rows[i].output_token_ids, dtype=torch.long, device=device)
        counts = torch.zeros(vocab, device=device).index_add_(
            0, out_ids, torch.ones(len(out_ids), device=device)
        )
        if p.repetition_penalty != 1.0:
            seen = counts > 0
            seen[torch.tensor(rows[i].prompt_token_ids, dtype=torch.long, device=device)] = True
            penalized = torch.where(row > 0, row / p.repetition_penalty, row * p.repetition_penalty)
            row.copy_(torch.where(seen, penalized, row))
        row -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).float()


# Byte value -> the 8 logit offsets its bits stand for: 0 where the bit is set (allowed),
# -inf where it is clear. Adding rows of it is several times faster on CPU than unpacking
# bits with shifts and masking with a bool tensor.
_BYTE_OFFSETS = torch.tensor(
    [[0.0 if (b >> k) & 1 else float("-inf") for k in range(8)] for b in range(256)]
)  # [256, 8]


def apply_bitmasks(logits: torch.Tensor, idx: list[int], bitmasks: torch.Tensor) -> None:
    """In place: logits[idx[j], t] = -inf where bit t of bitmasks[j] is clear.

    bitmasks [R, ceil(vocab / 32)] int32, little-endian: token t is bit t % 8 of byte t // 8.
    A row that allows every token (free text before a tool call) is left alone.
    """
    constrains = ~(bitmasks == -1).all(dim=1)  # [R]
    keep = [j for j, c in enumerate(constrains.tolist()) if c]
    if not keep:
        return
    table = _BYTE_OFFSETS.to(logits.device)
    packed = bitmasks[keep].contiguous().view(torch.uint8).to(logits.device)  # [K, words * 4]
    offsets = table.index_select(0, packed.flatten().long()).view(len(keep), -1)
    rows = torch.tensor([idx[j] for j in keep], device=logits.device)
    logits.index_add_(0, rows, offsets[:, : logits.shape[1]].contiguous())


def apply_truncation(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """top-k, top-p and min-p on temperature-scaled logits [R, V]; masked entries -> -inf."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    vocab = logits.shape[1]
    top_k = torch.tensor([p.top_k if p.top_k > 0 else vocab for p in params], device=logits.device)
    top_p = torch.tensor([p.top_p for p in params], device=logits.device)
    min_p = torch.tensor([p.min_p for p in params], device=logits.device)
    ranks = torch.arange(vocab, device=logits.device)[None, :]
    drop = ranks >= top_k[:, None]
    probs = sorted_logits.softmax(dim=-1)
    # Keep the smallest prefix whose mass reaches top_p: drop a token when the mass before
    # it already reaches top_p (the first token is always kept).
    mass_before = probs.cumsum(dim=-1) - probs
    drop |= mass_before >= top_p[:, None]
    drop |= probs < (min_p * probs[:, :1].squeeze(1))[:, None]
    drop[:, 0] = False
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)


def argmax_rows(logits: torch.Tensor, rows: list[int]) -> list[int]:
    """The index of each row's largest logit (the first of equal ones). On the CPU through
    numpy, whose argmax is vectorized where torch's walks a row element by element (see
    benchmarks/sampler_cost.py)."""
    if logits.device.type != "cpu":
        return logits[rows].argmax(dim=-1).tolist()
    values = logits.numpy()
    if rows != list(range(len(values))):  # all rows in order (the usual case) need no copy
        values = values[rows]
    return values.argmax(axis=-1).tolist()


class Sampler:
    def __call__(
        self, logits: torch.Tensor, rows: list[SamplingRow], shared_generator: torch.Generator
    ) -> SamplerOutput:
        """logits [N, V] fp32 (modified in place) -> one token per row."""
        need_logprobs = any(r.params.logprobs is not None for r in rows)
        logprobs = logits.log_softmax(dim=-1) if need_logprobs else None
        penalized = [i for i, r in enumerate(rows) if r.params.needs_penalties]
        if penalized:
            apply_penalties(logits, rows, penalized)
        for i, r in enumerate(rows):
            if r.banned_token_ids:
                logits[i, r.banned_token_ids] = float("-inf")
            if r.params.logit_bias:
                ids = torch.tensor(list(r.params.logit_bias), device=logits.device)
                bias = torch.tensor(list(r.params.logit_bias.values()), device=logits.device)
                logits[i, ids] += bias
        masked = [i for i, r in enumerate(rows) if r.bitmask is not None]
        if masked:
            bitmasks = [r.bitmask for r in rows if r.bitmask is not None]
            apply_bitmasks(logits, masked, torch.stack(bitmasks))
        tokens = self._draw(logits, rows, list(range(len(rows))), shared_generator)
        refused = [i for i, r in enumerate(rows) if r.grammar and not r.grammar.allows(tokens[i])]
        if refused:
            self._redraw(logits, rows, refused, tokens, shared_generator)
        return SamplerOutput(tokens, logprobs)

    def _redraw(
        self,
        logits: torch.Tensor,
        rows: list[SamplingRow],
        refused: list[int],
        tokens: list[int],
        shared_generator: torch.Generator,
    ) -> None:
        """In place on tokens: rows whose draw the grammar refused draw again from the masked
        distribution."""
        # NOTE: exact. A valid token t comes first with p(t), or after a refusal (probability
        # 1 - Z, Z the valid mass) with p(t) / Z; in all p(t) / Z, the masked distribution.
        grammars = [rows[i].grammar for i in refused]
        apply_bitmasks(logits, refused, torch.stack([g.bitmask() for g in grammars if g]))
        again = self._draw(logits, rows, refused, shared_generator)
        for i, token in zip(refused, again, strict=True):
            tokens[i] = token

    def _draw(
        self,
        logits: torch.Tensor,
        rows: list[SamplingRow],
        idx: list[int],
        shared_generator: torch.Generator,
    ) -> list[int]:
        """One token for each row in `idx` (logits is not modified)."""
        tokens = [0] * len(idx)
        greedy = [j for j, i in enumerate(idx) if rows[i].params.is_greedy]
        if greedy:
            best = argmax_rows(logits, [idx[j] for j in greedy])
            for j, token in zip(greedy, best, strict=True):
                tokens[j] = token
        if len(greedy) < len(idx):
            random = [j for j, i in enumerate(idx) if not rows[i].params.is_greedy]
            rows_idx = [idx[j] for j in random]
            drawn = self._sample(logits, rows, rows_idx, shared_generator).tolist()
            for j, token in zip(random, drawn, strict=True):
                tokens[j] = token
        return tokens

    def _sample(
        self,
        logits: torch.Tensor,
        rows: list[SamplingRow],
        idx: list[int],
        shared_generator: torch.Generator,
    ) -> torch.Tensor:
        """One draw for each row of logits in `idx`, from softmax(logits / temperature)."""
        params = [rows[i].params for i in idx]
        device = logits.device
        # float32 whatever the request sent (a JSON temperature of 1 arrives as an int).
        temps = torch.tensor([p.temperature for p in params], dtype=torch.float32, device=device)
        # NOTE: one draw per row, not one per vocabulary entry (an exponential race over the
        # vocabulary cost more than the forward pass of a small model).
        generators = [rows[i].generator or shared_generator for i in idx]
        uniforms = torch.cat(
            [torch.rand(1, dtype=torch.float64, generator=g, device=g.device) for g in generators]
        ).to(device)
        chosen = torch.tensor(idx, dtype=torch.long, device=device)
        kernel = kernels.load("sampling") if device.type == "cpu" else None
        if kernel is not None:  # truncation and the draw in one pass per row
            top_k = torch.tensor([p.top_k for p in params], dtype=torch.long)
            top_p = torch.tensor([p.top_p for p in params], dtype=torch.float64)
            min_p = torch.tensor([p.min_p for p in params], dtype=torch.float32)
            return kernel.sample_rows(
                logits, chosen, temps, top_k, top_p, min_p, uniforms, kernels.num_threads()
            )
        logits = logits[chosen] / temps[:, None]
        if any(p.needs_truncation for p in params):
            logits = apply_truncation(logits, params)
        return sample_inverse_cdf(logits.softmax(dim=-1), uniforms)


def sample_inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Row r's token: the first t with cumsum(probs[r])[t] > uniforms[r] * sum(probs[r]).

    probs [R, V] >= 0 (zeros for masked tokens), uniforms [R] in [0, 1). A token of
    probability 0 is never chosen: its cumulative sum equals its predecessor's. The sums are
    fp32 (a float64 scan costs three times as much): over a vocabulary they are off by about
    1e-5 of the mass, which is how far a token's share of the draws can move.
    """
    cdf = probs.cumsum(dim=-1)  # [R, V]
    target = (uniforms.to(cdf.dtype) * cdf[:, -1]).unsqueeze(1)  # [R, 1], below each total
    tokens = torch.searchsorted(cdf, target, right=True).squeeze(1).clamp_(max=probs.shape[1] - 1)
    # Rounding can land past the last nonzero entry: take the most likely token there.
    chosen = probs.gather(1, tokens.unsqueeze(1)).squeeze(1)
    lost = (chosen <= 0).nonzero().flatten()
    if len(lost):
        tokens[lost] = probs[lost].argmax(dim=-1)
    return tokens
