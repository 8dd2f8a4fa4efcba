"""Exercise checkers for the quantization notebook: a symmetric round trip, a Q4_K sub-block's scale and min."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from gguf.quants import Q4_K

from ...quantize import quantize_tensor
from .engine import Case, CheckResult, Mistake, run_check


def _weights(out: int, inp: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g) * 0.05
    w[0, 1] = 0.4  # an outlier sets its group's scale
    return w


def _round_trip_cases() -> list[Case]:
    shapes = [(2, 8, 8, 4), (3, 16, 4, 4), (4, 64, 32, 4), (4, 64, 64, 4), (2, 32, 8, 8), (5, 64, 64, 8), (3, 96, 32, 4)]
    return [Case(f"w = a [{o}, {i}] tensor (seed {s}), bits={b}, group_size={g}", (_weights(o, i, s), b, g))
            for s, (o, i, g, b) in enumerate(shapes)]


def _round_trip_reference(w: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    return quantize_tensor(w, bits, group_size).dequantize()


def _round_trip(w, bits, group_size, qmax_of=lambda b: 2 ** (b - 1) - 1, rounding=torch.round,
                scale_dtype=torch.bfloat16, low=None):
    qmax = qmax_of(bits)
    g = w.reshape(w.shape[0], -1, group_size)
    scale = (g.abs().amax(-1, keepdim=True) / qmax).to(scale_dtype).float()
    q = rounding(g / scale).clamp(-qmax if low is None else low(bits), qmax)
    return (q * scale).reshape(w.shape)


ROUND_TRIP_MISTAKES = (
    Mistake("power_of_two_range", "a symmetric format uses -qmax..qmax with qmax = 2**(bits-1) - 1 (7 for int4, "
            "127 for int8): dividing max|w| by 2**(bits-1) leaves the largest weight short of its level.",
            lambda w, b, g: _round_trip(w, b, g, qmax_of=lambda b: 2 ** (b - 1), low=lambda b: -(2 ** (b - 1)))),
    Mistake("truncation", "round to the *nearest* level (torch.round): truncating towards zero doubles the error.",
            lambda w, b, g: _round_trip(w, b, g, rounding=torch.trunc)),
    Mistake("float32_scale", "the scale is stored in bfloat16: round it (`.to(torch.bfloat16).float()`) before "
            "dividing, so the integers match the scale that is kept.",
            lambda w, b, g: _round_trip(w, b, g, scale_dtype=torch.float32)),
    Mistake("one_scale_per_row", "each group of `group_size` consecutive inputs has its own scale, not the whole row.",
            lambda w, b, g: _round_trip(w, b, w.shape[1])),
)


def check_round_trip(fn: Callable[[torch.Tensor, int, int], torch.Tensor]) -> CheckResult:
    """`fn(w, bits, group_size) -> w_hat`: symmetric round-to-nearest quantization in groups, dequantized."""
    return run_check("round_trip", fn, _round_trip_cases(), _round_trip_reference,
                     "gemma3_minimal.quantize.quantize_tensor(w, bits, group_size).dequantize()", ROUND_TRIP_MISTAKES,
                     "per group: scale = bfloat16(max|w| / qmax); q = round(w / scale) clamped to [-qmax, qmax]; "
                     "w_hat = q * scale.")


def _scale_min_cases() -> list[Case]:
    rng = np.random.default_rng(0)
    blocks = [bytes(range(12)), bytes([255] * 12), bytes([0b11000001] * 4 + [0b10000010] * 4 + [0x5A] * 4)]
    blocks += [bytes(rng.integers(0, 256, 12, dtype=np.uint8)) for _ in range(3)]
    return [Case(f"scales = bytes({list(b)}), j={j}", (b, j)) for b in blocks for j in range(8)]


def _scale_min_reference(scales: bytes, j: int) -> tuple[int, int]:
    sc, m = Q4_K.get_scale_min(np.frombuffer(scales, dtype=np.uint8).reshape(1, 12))
    return int(sc[0, j]), int(m[0, j])


def _scale_min_low_bits_only(q: bytes, j: int) -> tuple[int, int]:
    return (q[j] & 63, q[j + 4] & 63) if j < 4 else (q[j + 4] & 15, q[j + 4] >> 4)


def _scale_min_nibbles_swapped(q: bytes, j: int) -> tuple[int, int]:
    if j < 4:
        return q[j] & 63, q[j + 4] & 63
    return (q[j + 4] >> 4) | ((q[j - 4] >> 6) << 4), (q[j + 4] & 15) | ((q[j] >> 6) << 4)


SCALE_MIN_MISTAKES = (
    Mistake("low_bits_only", "for sub-blocks 4-7 the byte q[j+4] holds only the low 4 bits of the scale and of the "
            "min; their top 2 bits are the top 2 bits of q[j-4] (scale) and q[j] (min).", _scale_min_low_bits_only),
    Mistake("nibbles_swapped", "in q[j+4] the scale's low 4 bits are the low nibble (& 0xF) and the min's are the "
            "high nibble (>> 4), not the other way round.", _scale_min_nibbles_swapped),
)


def check_q4k_scale_min(fn: Callable[[bytes, int], Any]) -> CheckResult:
    """`fn(scales, j) -> (scale, min)`: the 6-bit scale and min of sub-block j of a Q4_K super-block."""
    return run_check("q4k_scale_min", fn, _scale_min_cases(), _scale_min_reference, "gguf.quants.Q4_K.get_scale_min",
                     SCALE_MIN_MISTAKES, "j < 4: scale = q[j] & 63, min = q[j+4] & 63; j >= 4: the low 4 bits from "
                     "q[j+4], the top 2 bits from the top of q[j-4] (scale) and q[j] (min).")
