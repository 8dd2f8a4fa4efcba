"""Exercise checkers for notebook 04: RMSNorm and repeat_kv."""

from __future__ import annotations

import random
from collections.abc import Callable

import torch

from ... import layers
from .engine import Case, CheckResult, Mistake, run_check


def _rms_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    norm = layers.RMSNorm(weight.shape[0], eps)
    with torch.no_grad():
        norm.weight.copy_(weight)
        return norm(x)


def _rms_scale_w(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.float()
    return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).type_as(x)


def _rms_no_eps(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return _rms_reference(x, weight, 0.0)


def _rms_layer_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.float()
    h = (h - h.mean(-1, keepdim=True)) * torch.rsqrt(h.var(-1, unbiased=False, keepdim=True) + eps)
    return (h * (1 + weight.float())).type_as(x)


def _rms_in_input_dtype(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * (1 + weight.to(x.dtype))


def _rms_cases(n_random: int = 5, seed: int = 0) -> list[Case]:
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    cases = [
        Case("x of shape [2, 4], weight all zeros (scale 1), eps=1e-6", (torch.randn(2, 4, generator=gen), torch.zeros(4), 1e-6)),
        Case("x of shape [3, 8], a random weight, eps=1e-6", (torch.randn(3, 8, generator=gen), torch.randn(8, generator=gen), 1e-6)),
        Case("x = tiny values 1e-4 of shape [2, 6], eps=1e-2", (torch.full((2, 6), 1e-4), torch.randn(6, generator=gen), 1e-2)),
        Case("x of shape [2, 3, 16] in bfloat16, eps=1e-6",
             ((10 * torch.randn(2, 3, 16, generator=gen)).bfloat16(), torch.randn(16, generator=gen), 1e-6)),
    ]
    for _ in range(n_random):
        shape = [rng.randint(1, 4), rng.randint(1, 6), rng.choice([4, 16, 64])]
        x = torch.randn(*shape, generator=gen) * rng.choice([0.1, 1.0, 30.0])
        cases.append(Case(f"x of shape {shape}, a random weight, eps=1e-6", (x, torch.randn(shape[-1], generator=gen), 1e-6)))
    return cases


RMS_NORM_MISTAKES = (
    Mistake("scale_w", "Gemma scales by (1 + w), not w: the weight is stored as an offset from 1, "
            "so a fresh layer (w = 0) leaves the normalized x unchanged.", _rms_scale_w),
    Mistake("layer_norm", "RMSNorm does not subtract the mean: divide by sqrt(mean(x^2) + eps) only.", _rms_layer_norm),
    Mistake("no_eps", "add eps inside the square root: sqrt(mean(x^2) + eps); it matters when x is tiny.", _rms_no_eps),
    Mistake("input_dtype", "compute in float32 (`x.float()`), then cast the result back to x's dtype "
            "(`.type_as(x)`): bfloat16 is too coarse for the mean of squares.", _rms_in_input_dtype),
)


def check_rms_norm(fn: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]) -> CheckResult:
    """`fn(x [..., dim], weight [dim], eps) -> [..., dim]`: Gemma's RMSNorm, scale (1 + weight)."""
    return run_check("rms_norm", fn, _rms_cases(), _rms_reference, "gemma3_minimal.layers.RMSNorm",
                     RMS_NORM_MISTAKES, "normalize over the last dimension only, one row at a time.")


def _repeat_kv_reference(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """repeat_kv as the library's grouped attention sees it (it never copies K/V heads).

    With zero queries and a diagonal mask, query t of head h attends to key t only, with weight 1,
    so the output is the value that head h reads: x[:, h // n_rep, t], exactly.
    """
    b, k, t, d = x.shape
    queries = torch.zeros(b, k * n_rep, t, d, dtype=x.dtype)
    return layers.grouped_attention(queries, x, x, torch.eye(t, dtype=torch.bool), scaling=1.0)


def _repeat_kv_cases(n_random: int = 5, seed: int = 0) -> list[Case]:
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    shapes = [(1, 2, 3, 2, 2), (1, 1, 2, 2, 4), (2, 4, 3, 8, 1)]
    shapes += [(rng.randint(1, 2), rng.randint(1, 4), rng.randint(1, 5), rng.choice([2, 4, 8]), rng.randint(1, 4))
               for _ in range(n_random)]
    return [Case(f"x of shape [{b}, {k}, {t}, {d}], n_rep={n}", (torch.randn(b, k, t, d, generator=gen), n))
            for b, k, t, d, n in shapes]


REPEAT_KV_MISTAKES = (
    Mistake("tiled", "each K/V head serves n_rep *neighbouring* query heads: the order is "
            "[k0, k0, k1, k1], not [k0, k1, k0, k1] (`x.repeat` tiles; repeat each head in place).",
            lambda x, n: x.repeat(1, n, 1, 1)),
    Mistake("wrong_dim", "repeat along the heads dimension (dim 1), not along positions or channels.",
            lambda x, n: x.repeat_interleave(n, dim=2)),
)


def check_repeat_kv(fn: Callable[[torch.Tensor, int], torch.Tensor]) -> CheckResult:
    """`fn(x [B, K, T, D], n_rep) -> [B, K * n_rep, T, D]`: each K/V head repeated for its query heads."""
    return run_check("repeat_kv", fn, _repeat_kv_cases(), _repeat_kv_reference, "gemma3_minimal.layers.grouped_attention",
                     REPEAT_KV_MISTAKES, "query head h uses K/V head h // n_rep.")
