"""The pieces of a Gemma 3 decoder block: RMSNorm, the GeGLU MLP and grouped-query attention.

    RMSNorm(x)   = x / sqrt(mean(x^2) + eps) * (1 + w)            (w starts at 0: scale 1)
    GeGLU(x)     = down(gelu_tanh(gate(x)) * up(x))
    Attention(x) = o(softmax(q k^T / sqrt(query_pre_attn_scalar) + mask) v)
                   q = RoPE(RMSNorm(x Wq)), k = RoPE(RMSNorm(x Wk)), v = x Wv
                   (QK-norm replaces Gemma 2's soft-capping, report section 2;
                    H query heads share K kv heads: grouped-query attention)

Parameter names follow the checkpoint (`q_proj`, `q_norm`, `gate_proj`, ...), so loading weights
is a name map with shape checks. Projections are plain `nn.Linear(bias=False)`; `fast.speed_up`
re-lays them for decoding speed without changing names or results.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import LOCAL, Gemma3Config
from .kv_cache import LayerCache
from .masks import attention_mask
from .rope import apply_rope

# Queries per attention call: every score block is [heads, 512, keys], never [seq, seq] for long inputs.
QUERY_CHUNK = 512


class RMSNorm(nn.Module):
    """x / rms(x) * (1 + w), computed in float32; w starts at 0, so the scale starts at 1."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h * (1.0 + self.weight.float())).type_as(x)


class GeGLU(nn.Module):
    """down(gelu_tanh(gate(x)) * up(x)): the gated MLP of every Gemma 3 block."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., hidden] -> [..., hidden]
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))


def grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                      scaling: float) -> torch.Tensor:
    """softmax(q k^T * scaling, masked) v with K/V heads shared by groups of query heads.

    q [B, H, Tq, D]; k, v [B, K, Tk, D] with H = K * R; mask [..., Tq, Tk] bool (True: attend).
    Query head h reads K/V head h // R. Instead of copying K/V R times, the R query heads of a
    group are stacked as R * Tq rows against their shared K/V head: [B, K, R * Tq, Tk] scores.
    """
    B, H, Tq, D = q.shape
    K = k.shape[1]
    R = H // K
    scores = (q.reshape(B, K, R * Tq, D) @ k.transpose(-1, -2)).mul_(scaling)  # [B, K, R * Tq, Tk]
    scores = scores.view(B, K, R, Tq, -1).masked_fill_(~mask.view(-1, 1, 1, Tq, mask.shape[-1]), float("-inf"))
    weights = scores.softmax(dim=-1, dtype=torch.float32).to(q.dtype)  # float32 softmax, as transformers
    return (weights.view(B, K, R * Tq, -1) @ v).view(B, H, Tq, D)


class Attention(nn.Module):
    """Grouped-query attention with QK-norm, RoPE and `query_pre_attn_scalar ** -0.5` scaling."""

    def __init__(self, cfg: Gemma3Config, layer_idx: int):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.scaling = cfg.query_pre_attn_scalar**-0.5
        self.is_sliding = cfg.layer_types[layer_idx] == LOCAL
        self.sliding_window = cfg.sliding_window if self.is_sliding else None
        H, K, D = self.num_heads, self.num_kv_heads, self.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, H * D, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, K * D, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, K * D, bias=False)
        self.o_proj = nn.Linear(H * D, cfg.hidden_size, bias=False)
        self.q_norm = RMSNorm(D, cfg.rms_norm_eps)  # QK-norm replaces Gemma 2's soft-capping
        self.k_norm = RMSNorm(D, cfg.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                cache: LayerCache | None = None, image_ids: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, T, hidden] at `positions` [T] -> [B, T, hidden]. cos, sin: RoPE tables [T, D];
        `cache` stores the new keys and gives back all the queries see; image_ids [B, T]: -1 for text."""
        B, T, _ = x.shape
        H, K, D = self.num_heads, self.num_kv_heads, self.head_dim
        q, k, v = self.project_qkv(x)  # [B, T, H * D], [B, T, K * D], [B, T, K * D]
        q = q.view(B, T, H, D).transpose(1, 2)  # [B, H, T, D]
        k = k.view(B, T, K, D).transpose(1, 2)  # [B, K, T, D]
        v = v.view(B, T, K, D).transpose(1, 2)  # [B, K, T, D]
        q = apply_rope(self.q_norm(q), cos, sin)
        k = apply_rope(self.k_norm(k), cos, sin)
        k_pos, k_image_ids = positions, image_ids
        if cache is not None:
            k, v, k_pos, k_image_ids = cache.update(k, v, positions, image_ids)  # [B, K, Tk, D]
        out = self.attend(q, k, v, positions, k_pos, image_ids, k_image_ids)  # [B, H, T, D]
        return self.o_proj(out.transpose(1, 2).reshape(B, T, H * D))

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The three input projections x Wq, x Wk, x Wv."""
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor,
               q_image_ids: torch.Tensor | None = None, k_image_ids: torch.Tensor | None = None) -> torch.Tensor:
        """softmax(q k^T * scaling + mask) v, QUERY_CHUNK queries at a time: q [B, H, Tq, D], k, v [B, K, Tk, D]
        at positions q_pos [Tq], k_pos [Tk]; image ids [B, Tq], [B, Tk] (or None for text only)."""
        outs = []
        for start in range(0, q.shape[2], QUERY_CHUNK):
            rows = slice(start, start + QUERY_CHUNK)
            q_images = None if q_image_ids is None else q_image_ids[:, rows]
            mask = attention_mask(q_pos[rows], k_pos, self.sliding_window, q_images, k_image_ids)  # [(B,) Tq, Tk]
            keys = slice(None)
            if q.shape[2] > 1:  # a prompt: skip the keys that no query of the chunk sees (one query sees all)
                seen = mask.reshape(-1, mask.shape[-1]).any(dim=0).nonzero()  # [n, 1] indices of keys seen
                keys = slice(int(seen[0]), int(seen[-1]) + 1)
            outs.append(grouped_attention(q[:, :, rows], k[:, :, keys], v[:, :, keys], mask[..., keys], self.scaling))
        return torch.cat(outs, dim=2)  # [B, H, Tq, D]
