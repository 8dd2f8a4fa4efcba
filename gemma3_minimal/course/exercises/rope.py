"""Exercise checkers for notebook 03: RoPE."""

from __future__ import annotations

import random
from collections.abc import Callable

import torch

from ... import rope
from .engine import Case, CheckResult, Mistake, run_check


def _rope_reference(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    cos, sin = rope.rope_cos_sin(positions, rope.rope_inv_freq(x.shape[-1], base))
    return rope.apply_rope(x, cos, sin)


def _rope_interleaved(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    d = x.shape[-1]
    angles = positions.float()[:, None] * rope.rope_inv_freq(d, base)  # [T, D/2]
    even, odd = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = even * angles.cos() - odd * angles.sin()
    out[..., 1::2] = even * angles.sin() + odd * angles.cos()
    return out


def _rope_other_way(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    return _rope_reference(x, -positions, base)


def _rope_halves_not_negated(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    cos, sin = rope.rope_cos_sin(positions, rope.rope_inv_freq(x.shape[-1], base))
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((x2, x1), dim=-1) * sin


def _rope_exponent_without_2(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    d = x.shape[-1]
    inv_freq = 1.0 / base ** (torch.arange(d // 2).float() / d)
    cos, sin = rope.rope_cos_sin(positions, inv_freq)
    return rope.apply_rope(x, cos, sin)


def _rope_cases(n_random: int = 6, seed: int = 0) -> list[Case]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(4, 8, 10_000.0), (3, 2, 10_000.0), (5, 16, 1_000_000.0)]
    rng = random.Random(seed)
    shapes += [(rng.randint(1, 12), 2 * rng.randint(1, 32), rng.choice([10_000.0, 1_000_000.0])) for _ in range(n_random)]
    cases = []
    for i, (t, d, base) in enumerate(shapes):
        x = torch.randn(t, d, generator=gen)
        start = 0 if i < 3 else rng.randint(0, 1000)  # later cases start mid-sequence (as with a KV cache)
        positions = torch.arange(start, start + t)
        cases.append(Case(f"x of shape [{t}, {d}], positions {start}..{start + t - 1}, base={base:g}", (x, positions, base)))
    return cases


ROPE_MISTAKES = (
    Mistake("interleaved", "Gemma pairs channel i with channel i + head_dim/2 (the two halves), "
            "not neighbours (2i, 2i+1): that interleaved layout is another checkpoint format.", _rope_interleaved),
    Mistake("halves_swapped", "rotate_half(x) is (-x2, x1): the second half, negated, goes first. "
            "Yours rotates the wrong way (its halves are swapped or negated the wrong way round).", _rope_other_way),
    Mistake("halves_not_negated", "rotate_half(x) is (-x2, x1): you swapped the halves but forgot the minus sign.",
            _rope_halves_not_negated),
    Mistake("exponent_without_2", "the frequencies are 1 / base^(2i / head_dim) for i = 0..head_dim/2-1: "
            "the exponent has a 2 (or use arange(0, head_dim, 2) / head_dim).", _rope_exponent_without_2),
)


def check_rope(fn: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]) -> CheckResult:
    """`fn(x [T, D], positions [T], base) -> [T, D]`: x rotated by RoPE, pairs (i, i + D/2)."""
    return run_check("apply_rope", fn, _rope_cases(), _rope_reference, "gemma3_minimal.rope.apply_rope",
                     ROPE_MISTAKES, "check one position by hand: position 0 must give x back unchanged.")
