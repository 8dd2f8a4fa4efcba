"""Rotary position embeddings (RoPE): base 10k on local layers, 1M on global layers.

A pair of channels (i, i + head_dim/2) is rotated by the angle `position * inv_freq[i]`.
The 128K-context models (4B, 12B, 27B) interpolate positions on global layers: linear
scaling x8 divides every frequency by 8. The report states the bases (10k local, 1M global) and
positional interpolation in section 2 ("Long context") and the factor of 8 in section 5.3
("Enabling long context": pre-trained at 32K, rescaled to 128K at the end of pre-training).
"""

from __future__ import annotations

import torch

from .config import LOCAL, Gemma3Config


def rope_inv_freq(head_dim: int, base: float, scaling_factor: float = 1.0, device=None) -> torch.Tensor:
    """[head_dim / 2] float32 frequencies `1 / base^(2i / head_dim) / scaling_factor`."""
    if head_dim % 2:
        raise ValueError(f"head_dim must be even for RoPE, got {head_dim}")
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
    return 1.0 / (base**exponent) / scaling_factor


def layer_inv_freq(cfg: Gemma3Config, kind: str, device=None) -> torch.Tensor:
    """The frequencies of a layer kind: base 10k on LOCAL layers; base 1M, divided by
    `rope_scaling_factor` (8 on the 128K models), on GLOBAL ones."""
    if kind == LOCAL:
        return rope_inv_freq(cfg.head_dim, cfg.rope_local_base_freq, device=device)
    return rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling_factor, device=device)


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables for `positions` [..., T]: each [..., T, head_dim] float32."""
    angles = positions.float().unsqueeze(-1) * inv_freq.to(positions.device)  # [..., T, D/2]
    emb = torch.cat((angles, angles), dim=-1)  # [..., T, D]: both halves of a pair share an angle
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate queries or keys x [batch, heads, T, head_dim] by cos/sin [T, head_dim] (or [batch, 1, T, D])."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + rotate_half(x) * sin
