"""The CPU sampling kernel (csrc/sampling.cpp): temperature, top-k, top-p and min-p, and the
inverse-CDF draw in one pass per row, against the torch path it replaces (apply_truncation, then
softmax and the cumulative sum, in float64 here)."""

from __future__ import annotations

import pytest
import torch

from chatfleet import SamplingParams
from chatfleet.model import kernels
from chatfleet.model.sampler import apply_truncation

KERNEL = kernels.load("sampling")
pytestmark = pytest.mark.skipif(KERNEL is None, reason="the sampling kernel needs AVX-512")


def draw(logits: torch.Tensor, rows: list[int], params: SamplingParams, uniforms) -> list[int]:
    """The kernel's tokens for `rows` of logits, every row with `params`."""
    n = len(rows)
    return KERNEL.sample_rows(
        logits,
        torch.tensor(rows, dtype=torch.long),
        torch.full((n,), params.temperature, dtype=torch.float32),
        torch.full((n,), params.top_k, dtype=torch.long),
        torch.full((n,), params.top_p, dtype=torch.float64),
        torch.full((n,), params.min_p, dtype=torch.float32),
        torch.as_tensor(uniforms, dtype=torch.float64),
        2,
    ).tolist()


def reference(row: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The distribution the torch path draws from, in float64."""
    scaled = (row / params.temperature)[None, :]
    if params.needs_truncation:
        scaled = apply_truncation(scaled, [params])
    return scaled[0].double().softmax(dim=0)


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.7),
        SamplingParams(temperature=1.0, top_k=20),
        SamplingParams(temperature=1.3, top_p=0.8),
        SamplingParams(temperature=1.0, min_p=0.05),
        SamplingParams(temperature=0.9, top_k=50, top_p=0.9, min_p=0.01),
        SamplingParams(temperature=2.0, top_p=0.5),
    ],
    ids=["temperature", "top_k", "top_p", "min_p", "all three", "flat top_p"],
)
def test_the_kernel_draws_the_inverse_cdf_of_the_truncated_distribution(params):
    """On a grid of uniforms, each draw is the token whose CDF interval holds it, except
    within a rounding of an interval's edge; no token outside the kept set is ever drawn."""
    logits = 2 * torch.randn(3, 5000, generator=torch.Generator().manual_seed(0))
    logits[1, ::7] = float("-inf")  # masked entries in the row drawn from
    q = reference(logits[1], params)
    n = 8192
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    got = torch.tensor(draw(logits, [1] * n, params, u))
    cdf = q.cumsum(0)
    want = torch.searchsorted(cdf, u, right=True).clamp(max=len(q) - 1)
    near_edge = (cdf[None, :] - u[:, None]).abs().min(dim=1).values < 1e-5
    assert bool(((got == want) | near_edge).all())
    assert set(got.tolist()) <= set(q.nonzero().flatten().tolist())
    assert (got == want).float().mean() > 0.99


def test_a_masked_token_is_never_drawn_even_at_the_ends_of_the_unit_interval():
    logits = torch.full((2, 300), float("-inf"))
    logits[0, [5, 200]] = torch.tensor([1.0, 0.5])
    logits[1, 299] = 3.0
    ends = [0.0, torch.nextafter(torch.tensor(1.0), torch.tensor(0.0)).item()]
    params = SamplingParams(temperature=1.0)
    assert draw(logits, [0, 0], params, ends) == [5, 200]
    assert draw(logits, [1, 1], params, ends) == [299, 299]
    assert draw(logits, [1, 0], SamplingParams(temperature=1.0, top_k=1), [0.9, 0.9]) == [299, 5]


@pytest.mark.parametrize(
    "weights, params, kept",
    [
        # four equal at the top-k edge: the first two in token order
        ({40: 5.0, 10: 5.0, 30: 5.0, 20: 5.0}, SamplingParams(top_k=2), {10, 20}),
        # top-p 0.6 over 0.3, 0.2, 0.2, 0.2, 0.1 (and zeros): the mass before the third 0.2
        # is 0.7, so two of the three equal ones are kept, the first two in token order
        ({9: 0.3, 7: 0.2, 3: 0.2, 5: 0.2, 1: 0.1}, SamplingParams(top_p=0.6), {9, 3, 5}),
        # min-p 0.5 of the largest (0.3): the 0.2s stay, the 0.1 goes
        ({9: 0.3, 7: 0.2, 3: 0.2, 5: 0.2, 1: 0.1}, SamplingParams(min_p=0.5), {9, 7, 3, 5}),
    ],
    ids=["top_k ties", "top_p ties", "min_p"],
)
def test_tokens_of_equal_weight_at_the_edge_are_kept_in_token_order(weights, params, kept):
    logits = torch.full((1, 64), float("-inf"))
    for token, w in weights.items():
        logits[0, token] = w if params.top_k else torch.tensor(w).log()
    uniforms = [(i + 0.5) / 200 for i in range(200)]
    assert set(draw(logits, [0] * 200, params, uniforms)) == kept
