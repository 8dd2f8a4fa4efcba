"""Exercise checkers for notebook 03: RoPE, and the per-layer tables with the x8 scaling of the 128K models."""

from __future__ import annotations

import random
from collections.abc import Callable

import torch

from ... import rope
from ...config import GLOBAL, LOCAL, get_config
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


# --- which table each layer uses, and the x8 scaling of the 128K models -------------------------


def _angles(cfg, layer_idx: int, positions: torch.Tensor, local_scaled: bool = False, global_scaled: bool = True,
            multiply: bool = False, scale_base: bool = False, swap_bases: bool = False) -> torch.Tensor:
    is_local = cfg.layer_types[layer_idx] == LOCAL
    if swap_bases:
        is_local = not is_local
    base = cfg.rope_local_base_freq if is_local else cfg.rope_theta
    factor = cfg.rope_scaling_factor if (local_scaled if is_local else global_scaled) else 1.0
    if scale_base:
        base, factor = base * factor, 1.0
    if multiply:
        factor = 1.0 / factor
    return positions.float()[:, None] * rope.rope_inv_freq(cfg.head_dim, base, factor)


def _angles_reference(cfg, layer_idx: int, positions: torch.Tensor) -> torch.Tensor:
    """The angles behind the library's tables: `Gemma3TextModel.blocks` picks local or global per layer."""
    return positions.float()[:, None] * rope.layer_inv_freq(cfg, cfg.layer_types[layer_idx])


def _angles_cases(n_random: int = 6, seed: int = 0) -> list[Case]:
    rng = random.Random(seed)
    picks = [("4b", 5, 0, 4), ("4b", 0, 0, 4), ("270m", 5, 100, 3), ("27b", 11, 131_000, 2), ("27b", 12, 65_536, 2)]
    for _ in range(n_random):
        name = rng.choice(["1b", "4b", "12b", "27b"])
        layer = rng.randrange(get_config(name).num_hidden_layers)
        picks.append((name, layer, rng.randint(0, 120_000), rng.randint(1, 4)))
    cases = []
    for name, layer, start, t in picks:
        cfg = get_config(name)
        kind = "global" if cfg.layer_types[layer] == GLOBAL else "local"
        cases.append(Case(f"cfg=get_config({name!r}), layer_idx={layer} ({kind}), positions {start}..{start + t - 1}",
                          (cfg, layer, torch.arange(start, start + t))))
    return cases


ROPE_ANGLES_MISTAKES = (
    Mistake("local_scaled", "only global layers are rescaled: local layers keep base 10,000 and factor 1 "
            "(their window is short, they never see far positions; report §5.3).",
            lambda c, i, p: _angles(c, i, p, local_scaled=True)),
    Mistake("factor_multiplied", "linear scaling *divides* the frequencies by the factor (positions look 8 times "
            "closer), it does not multiply them.", lambda c, i, p: _angles(c, i, p, multiply=True)),
    Mistake("base_scaled", "the factor divides the frequencies, 1 / base^(2i/D) / 8; multiplying the base by 8 "
            "changes each pair by a different amount.", lambda c, i, p: _angles(c, i, p, scale_base=True)),
    Mistake("bases_swapped", "local layers use base 10,000 (`rope_local_base_freq`), global layers 1,000,000 "
            "(`rope_theta`); yours are the other way round.", lambda c, i, p: _angles(c, i, p, swap_bases=True)),
    Mistake("not_scaled", "the 128K models (4B, 12B, 27B) divide the global frequencies by "
            "`cfg.rope_scaling_factor` (8): apply it.", lambda c, i, p: _angles(c, i, p, global_scaled=False)),
)


def check_rope_angles(fn: Callable[[object, int, torch.Tensor], torch.Tensor]) -> CheckResult:
    """`fn(cfg, layer_idx, positions [T]) -> [T, head_dim/2]`: the RoPE angles of that layer, x8 scaling included."""
    return run_check("rope_angles", fn, _angles_cases(), _angles_reference,
                     "gemma3_minimal.rope.rope_inv_freq as Gemma3TextModel.blocks uses it", ROPE_ANGLES_MISTAKES,
                     "first decide local or global from cfg.layer_types[layer_idx], then base and factor.")
